"""Tar shards: a streaming reader that trusts nothing it reads."""
