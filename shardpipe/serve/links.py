"""A ``RemoteLoader``'s bookkeeping: one ``ServerLink`` per server (its socket and standing), one
``Slot`` per part of the epoch, and the check every server message passes before any field is used.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

from shardpipe.serve.coordination import MAX_PARTS
from shardpipe.serve.wire import WireError, control
from shardpipe.stages.base import State
from shardpipe.state import StateCheck, StateError, pipeline_shape

#: a slot's queue item once its part is complete
END = object()
#: why a server that never answered was dropped
SILENT = "did not answer"


def check_reply(header: dict[str, Any]) -> None:
    """Refuse a server message whose fields the loader would misuse (``WireError``): a worker count
    sizes this trainer's epoch split, so it is bounded like a request's ``parts``."""
    kind = header["type"]
    if kind == "hello":
        workers = header.get("workers")
        if not isinstance(workers, int) or isinstance(workers, bool) or not 0 <= workers <= MAX_PARTS:
            raise WireError(f"hello: workers must be an integer from 0 to {MAX_PARTS}, not {str(workers)[:40]!r}")
        fp = header.get("fingerprint")
        if not isinstance(fp, str) or len(fp) > 128:
            raise WireError(f"hello: fingerprint must be a string of at most 128 characters, not {str(fp)[:40]!r}")
    elif kind == "batch":  # its state is what another server continues from: check its shape now
        if "state" not in header:
            raise WireError("batch: no state")
        if header["state"] is not None:
            try:
                pipeline_shape(header["state"], StateCheck("batch: state"))
            except StateError as e:
                raise WireError(str(e)) from None


def load_keys(server_key: str | Path, client_key: str | Path) -> tuple[bytes, bytes, bytes]:
    """``(server public, client public, client secret)`` CURVE keys from zmq.auth key files."""
    import zmq.auth

    server_public, _ = zmq.auth.load_certificate(str(server_key))
    public, secret = zmq.auth.load_certificate(str(client_key))
    if secret is None:
        raise ValueError(f"{client_key} holds no secret key: pass this trainer's .key_secret file")
    return server_public, public, secret


class ServerLink:
    """One server as the loader sees it: its socket, whether it is live, and why it was dropped."""

    def __init__(self, address: str):
        self.address = address
        self.sock: Any = None
        self.live = False
        self.workers = 0
        self.fingerprint: str | None = None
        self.last_seen = 0.0
        self.reason = SILENT  # why it was dropped

    def connect(self, ctx: Any, max_message: int, curve: tuple[bytes, bytes, bytes] | None) -> None:
        """Open a fresh socket to the server (closing any old one) and say hello."""
        import zmq

        self.close()
        self.reason = SILENT  # until it answers again
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvhwm = sock.sndhwm = 0  # credits bound the traffic; never drop a message
        sock.maxmsgsize = max_message  # the transport drops a larger frame before it is buffered
        sock.routing_id = os.urandom(8)  # kept across reconnects, so the server's assignments stay ours
        if curve:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
        sock.connect(self.address)
        self.sock = sock
        sock.send_multipart(control("hello"))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None


class Slot:
    """One part of this rank's epoch: where it runs and what has arrived."""

    def __init__(self, index: int, state: State | None):
        self.index = index
        self.queue: deque[Any] = deque()
        self.received: State | None = state  # after the last batch received (where a takeover starts)
        self.consumed: State | None = state  # after the last batch yielded (the resume state)
        self.assignment: int | None = None
        self.server: ServerLink | None = None
        self.ended = False  # the part's end was taken: nothing more comes from it this epoch
