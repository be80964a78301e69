"""Whole-batch decoding (CPU threads, DALI, torchvision on a GPU) behind one interface."""
