"""shardpipe: feed image-training jobs from tar shards as fast as the hardware allows.

Write shards with ``ShardWriter`` (or ``shardpipe write``), stream them with
``ShardDataset`` and ``ShardLoader``, or from ``shardpipe serve`` processes with
``RemoteLoader``; index existing shards with ``index_shards`` (or ``shardpipe index``)
and read single samples with ``IndexedDataset``. The stages in ``shardpipe.stages`` compose into
custom pipelines.
"""

from shardpipe.batchdecode import BatchDecodeLoader, resolve_batch_decoder
from shardpipe.dataset import ShardDataset
from shardpipe.errors import (
    CorruptShardError,
    DecodeError,
    ErrorHandler,
    MissingFieldError,
    ShardNotFoundError,
    ShardpipeError,
    ShardReadError,
    StateError,
    TruncatedShardError,
    WorkerDiedError,
    WorkerStallError,
    WorkerStartError,
)
from shardpipe.format.tar.writer import TarWriter
from shardpipe.image.normalize import normalize
from shardpipe.indexed import IndexedDataset
from shardpipe.loader import ShardLoader
from shardpipe.mix import MixedDataset
from shardpipe.options import BatchOptions, DecodeOptions, OpenOptions, SplitOptions
from shardpipe.serve.client import RemoteError, RemoteLoader
from shardpipe.workers import worker_context
from shardpipe.write.index_job import index_shards
from shardpipe.write.job import WriteOptions, WriteSummary, write_shards
from shardpipe.write.shard_writer import ShardWriter

__version__ = "0.1.0"

__all__ = [
    "BatchDecodeLoader",
    "BatchOptions",
    "CorruptShardError",
    "DecodeError",
    "DecodeOptions",
    "ErrorHandler",
    "IndexedDataset",
    "MissingFieldError",
    "MixedDataset",
    "OpenOptions",
    "RemoteError",
    "RemoteLoader",
    "ShardDataset",
    "ShardLoader",
    "ShardNotFoundError",
    "ShardReadError",
    "ShardWriter",
    "ShardpipeError",
    "SplitOptions",
    "StateError",
    "TarWriter",
    "TruncatedShardError",
    "WorkerDiedError",
    "WorkerStallError",
    "WorkerStartError",
    "WriteOptions",
    "WriteSummary",
    "__version__",
    "index_shards",
    "normalize",
    "resolve_batch_decoder",
    "worker_context",
    "write_shards",
]
