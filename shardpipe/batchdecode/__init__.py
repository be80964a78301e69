"""Batch decode: encoded batches in, ``(N, C, H, W)`` tensors out (base, cpu, dali, torchvision by name)."""

from shardpipe.batchdecode.base import BatchDecoder, decode_batch
from shardpipe.batchdecode.loader import BatchDecodeLoader
from shardpipe.batchdecode.registry import BATCH_DECODERS, resolve_batch_decoder

__all__ = ["BATCH_DECODERS", "BatchDecodeLoader", "BatchDecoder", "decode_batch", "resolve_batch_decoder"]
