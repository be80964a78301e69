"""Pipeline stages, in pipeline order. Each is a small resumable iterator (see ``base``)."""

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

__all__ = [
    "Augment",
    "Batch",
    "Context",
    "Decode",
    "Filter",
    "GeneratorStage",
    "GroupSamples",
    "Map",
    "ParallelMap",
    "Pipeline",
    "RequireFields",
    "SampleDecoder",
    "Shard",
    "ShardList",
    "Shuffle",
    "SplitSamples",
    "SplitShards",
    "Stage",
    "State",
    "Take",
    "Untar",
    "collate",
    "collate_images",
    "decode_field",
    "expand_urls",
    "load_manifest",
]
