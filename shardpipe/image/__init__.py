"""Images: per-image decoders, crop-aware fused decode + augment, normalization."""
