"""The decode fleet: ``shardpipe serve`` processes stream ready batches to ``RemoteLoader``s.

``server`` (the serving process), ``producer`` (its worker processes), ``socketdir`` (their
socket folder), ``client`` (``RemoteLoader``, the trainer side that coordinates the epoch),
``links`` (its servers, parts and reply checks), ``coordination`` (plan coordinates), ``wire``
(the pickle-free message format). Needs pyzmq (``shardpipe[serve]``).
"""

from shardpipe.serve.client import RemoteError, RemoteLoader

__all__ = ["RemoteError", "RemoteLoader"]
