"""Imported by the DataLoader forkserver (``shardpipe.workers``): resolve ``decoder="auto"`` once.

Workers forked from the server then inherit the chosen backend, already imported, and the
note about skipped backends is logged once instead of by every worker of every pass.
"""

from shardpipe.image.decoders.registry import get_decoder

get_decoder("auto")
