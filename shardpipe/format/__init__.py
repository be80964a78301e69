"""The on-disk format, in one place: sample keys and extensions, the tar reader (and writer)."""
