"""Writing shards: sources, presizing, the shard writer, and write jobs."""
