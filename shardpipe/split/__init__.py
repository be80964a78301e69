"""Epoch plans: which samples each rank and worker reads in an epoch, under each policy."""
