"""Bytes in and out: open shards locally or from object storage, retry and resume, cache, prefetch."""
