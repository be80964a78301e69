"""Pipeline stages, in pipeline order. Each is a small resumable iterator (see ``base``)."""

from .base import Context, Filter, GeneratorStage, Map, Pipeline, Stage, State, Take
from .batch import Batch, collate, collate_images
from .decode import Augment, Decode, SampleDecoder, decode_field
from .fields import RequireFields
from .parallel import ParallelMap
from .samples import GroupSamples, SplitSamples
from .shards import Shard, ShardList, SplitShards, expand_urls, load_manifest
from .shuffle import Shuffle
from .untar import Untar

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
