"""Glue for the training frameworks users run shardpipe under (each imports its framework lazily).

* ``shardpipe.integrations.accelerate``: ``prepare(accelerator, model, optimizer, loader)``.
* ``shardpipe.integrations.lightning``: ``ShardDataModule``, a LightningDataModule that resumes mid-epoch.
"""
