"""Development tools apart from the library proper: the photo-like JPEG generator and the benchmarks."""
