"""shardpipe: feed image-training jobs from tar shards as fast as the hardware allows.

Write shards with ``ShardWriter`` (or ``shardpipe write``), stream them with
``ShardDataset`` and ``ShardLoader``, or from ``shardpipe serve`` processes with
``RemoteLoader``; index existing shards with ``index_shards`` (or ``shardpipe index``)
and read single samples with ``IndexedDataset``. The stages in ``shardpipe.stages`` compose into
custom pipelines.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports name what __getattr__ imports lazily)
from typing import TYPE_CHECKING

from shardpipe.lazy import exports

#: public name -> the module that defines it: imported on first use, so that `shardpipe inspect`
#: and other commands that never touch torch start without importing it
_WHERE = {
    "AccessDeniedError": "shardpipe.io.access",
    "BatchDecodeLoader": "shardpipe.batchdecode",
    "BatchOptions": "shardpipe.options",
    "CorruptShardError": "shardpipe.errors",
    "DecodeError": "shardpipe.errors",
    "DecodeOptions": "shardpipe.options",
    "DuplicateMemberError": "shardpipe.errors",
    "ErrorHandler": "shardpipe.errors",
    "IndexedDataset": "shardpipe.indexed",
    "ListenError": "shardpipe.errors",
    "ManifestPathError": "shardpipe.format.manifest",
    "MissingFieldError": "shardpipe.errors",
    "MixedDataset": "shardpipe.mix",
    "NotTarError": "shardpipe.errors",
    "OpenOptions": "shardpipe.options",
    "OutputInUseError": "shardpipe.errors",
    "RemoteError": "shardpipe.serve.client",
    "RemoteLoader": "shardpipe.serve.client",
    "SetupError": "shardpipe.errors",
    "ShardDataset": "shardpipe.dataset",
    "ShardLoader": "shardpipe.loader",
    "ShardNotFoundError": "shardpipe.errors",
    "ShardReadError": "shardpipe.errors",
    "ShardUnavailableError": "shardpipe.errors",
    "ShardWriter": "shardpipe.write.shard_writer",
    "ShardpipeError": "shardpipe.errors",
    "SplitOptions": "shardpipe.options",
    "StateError": "shardpipe.errors",
    "StoreUnreachableError": "shardpipe.io.remote",
    "TarWriter": "shardpipe.format.tar.writer",
    "TransformError": "shardpipe.errors",
    "TruncatedShardError": "shardpipe.errors",
    "WorkerDiedError": "shardpipe.errors",
    "WorkerStallError": "shardpipe.errors",
    "WorkerStartError": "shardpipe.errors",
    "WriteOptions": "shardpipe.write.job",
    "WriteSummary": "shardpipe.write.job",
    "index_shards": "shardpipe.write.index_job",
    "normalize": "shardpipe.image.normalize",
    "resolve_batch_decoder": "shardpipe.batchdecode",
    "worker_context": "shardpipe.workers",
    "write_shards": "shardpipe.write.job",
}

if TYPE_CHECKING:  # the same names, for type checkers and editors (tests/test_architecture.py keeps them equal)
    from shardpipe.batchdecode import BatchDecodeLoader, resolve_batch_decoder
    from shardpipe.dataset import ShardDataset
    from shardpipe.errors import (
        CorruptShardError,
        DecodeError,
        DuplicateMemberError,
        ErrorHandler,
        ListenError,
        MissingFieldError,
        NotTarError,
        OutputInUseError,
        SetupError,
        ShardNotFoundError,
        ShardpipeError,
        ShardReadError,
        ShardUnavailableError,
        StateError,
        TransformError,
        TruncatedShardError,
        WorkerDiedError,
        WorkerStallError,
        WorkerStartError,
    )
    from shardpipe.format.manifest import ManifestPathError
    from shardpipe.format.tar.writer import TarWriter
    from shardpipe.image.normalize import normalize
    from shardpipe.indexed import IndexedDataset
    from shardpipe.io.access import AccessDeniedError
    from shardpipe.io.remote import StoreUnreachableError
    from shardpipe.loader import ShardLoader
    from shardpipe.mix import MixedDataset
    from shardpipe.options import BatchOptions, DecodeOptions, OpenOptions, SplitOptions
    from shardpipe.serve.client import RemoteError, RemoteLoader
    from shardpipe.workers import worker_context
    from shardpipe.write.index_job import index_shards
    from shardpipe.write.job import WriteOptions, WriteSummary, write_shards
    from shardpipe.write.shard_writer import ShardWriter

__version__ = "0.1.0"

__all__ = [*_WHERE, "__version__"]

__getattr__, __dir__ = exports(__name__, _WHERE, globals())
