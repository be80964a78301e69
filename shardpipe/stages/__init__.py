"""Pipeline stages, in pipeline order. Each is a small resumable iterator (see ``base``)."""

# ruff: noqa: F401  (the TYPE_CHECKING imports name what __getattr__ imports lazily)
from typing import TYPE_CHECKING

from shardpipe.lazy import exports

#: public name -> its module, imported on first use: the stages that read shards do not import torch
_WHERE = {
    "Augment": "shardpipe.stages.decode",
    "Batch": "shardpipe.stages.batch",
    "Context": "shardpipe.stages.base",
    "Decode": "shardpipe.stages.decode",
    "Filter": "shardpipe.stages.base",
    "GeneratorStage": "shardpipe.stages.base",
    "GroupSamples": "shardpipe.stages.samples",
    "Map": "shardpipe.stages.base",
    "ParallelMap": "shardpipe.stages.parallel",
    "Pipeline": "shardpipe.stages.base",
    "RequireFields": "shardpipe.stages.fields",
    "SampleDecoder": "shardpipe.stages.decode",
    "Shard": "shardpipe.stages.shards",
    "ShardList": "shardpipe.stages.shards",
    "Shuffle": "shardpipe.stages.shuffle",
    "SplitSamples": "shardpipe.stages.samples",
    "SplitShards": "shardpipe.stages.shards",
    "Stage": "shardpipe.stages.base",
    "State": "shardpipe.stages.base",
    "Take": "shardpipe.stages.base",
    "Untar": "shardpipe.stages.untar",
    "collate": "shardpipe.stages.batch",
    "collate_images": "shardpipe.stages.batch",
    "decode_field": "shardpipe.format.fields",
    "expand_urls": "shardpipe.stages.shards",
    "load_manifest": "shardpipe.format.manifest",
}

if TYPE_CHECKING:  # the same names, for type checkers and editors (tests/test_architecture.py keeps them equal)
    from shardpipe.format.fields import decode_field
    from shardpipe.format.manifest import load_manifest
    from shardpipe.stages.base import Context, Filter, GeneratorStage, Map, Pipeline, Stage, State, Take
    from shardpipe.stages.batch import Batch, collate, collate_images
    from shardpipe.stages.decode import Augment, Decode, SampleDecoder
    from shardpipe.stages.fields import RequireFields
    from shardpipe.stages.parallel import ParallelMap
    from shardpipe.stages.samples import GroupSamples, SplitSamples
    from shardpipe.stages.shards import Shard, ShardList, SplitShards, expand_urls
    from shardpipe.stages.shuffle import Shuffle
    from shardpipe.stages.untar import Untar

__all__ = list(_WHERE)
__getattr__, __dir__ = exports(__name__, _WHERE, globals())
