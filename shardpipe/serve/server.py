"""``shardpipe serve``: a decode server that streams ready batches to trainers.

The main process owns one ZMQ ROUTER socket (loopback by default) and forwards frames
between trainers and its worker processes, which run the pipelines (see ``producer``).
It answers ``hello`` (worker count, dataset fingerprint), hands each ``assign`` to the
least busy worker, passes credits and cancels on, and sends every client a heartbeat
each ``heartbeat`` seconds so a trainer notices a dead or stopped server in bounded time.
Parts of a trainer silent for ``idle_timeout`` seconds are cancelled (a trainer that died, or
that dropped this server while it was stopped); if that trainer comes back, its next credit
is answered ``lost`` and it restarts the part from its last received state. So are the parts
of a trainer that stops reading (``MAX_QUEUED`` messages wait for it) or is disconnected.

Limits: at most ``max_clients`` trainers hold parts at once, each at most ``MAX_PARTS`` parts,
and at most ``MAX_QUEUED`` messages wait here for any one connection (see ``MAX_QUEUED``).

What a client can make a server do is the four control messages above, validated field
by field: the dataset, transforms and options come from the server's own config file.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from shardpipe.config import load_config
from shardpipe.errors import ListenError
from shardpipe.serve.coordination import MAX_PARTS, Part, check_request, fingerprint
from shardpipe.serve.producer import run_worker
from shardpipe.serve.socketdir import make_socket_folder
from shardpipe.serve.wire import WireError, control, unpack

log = logging.getLogger("shardpipe.serve")

DEFAULT_BIND = "tcp://127.0.0.1:5555"
#: a request larger than this is refused (requests are small JSON: coordinates and a state)
MAX_REQUEST = 1 << 20
#: trainers that may hold parts here at once (each part holds a pipeline in a worker)
MAX_CLIENTS = 64
#: messages (batches, notices, heartbeats) that may wait here for one connection. Credits bound what
#: an honest trainer has in flight (``credits`` batches per part: a RemoteLoader grants one only for a
#: batch it took), but a grant is no receipt: a peer that grants without reading would make this queue
#: grow without bound. At this many, the trainer counts as not reading and its parts are cancelled;
#: it gets ``lost`` for its next credit and restarts them from its last batch. A connection cut off keeps
#: its queue until it reads or disconnects, and counts toward ``max_clients`` until then, so at most
#: ``max_clients x MAX_QUEUED`` batches are queued here. Keep credits x parts below it.
MAX_QUEUED = 256


def require_zmq() -> Any:
    try:
        import zmq
    except ImportError:
        raise ImportError(
            "the decode fleet needs pyzmq: pip install 'shardpipe[serve]' (or pip install pyzmq)"
        ) from None
    return zmq


def load_curve_secret(secret_file: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a zmq.auth key file; read at start-up so a bad file is a clean error."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(str(secret_file))
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key: pass the server's .key_secret file")
    return public, secret


def curve_server(sock: Any, secret_file: str | Path | tuple[bytes, bytes]) -> None:
    """Make ``sock`` a CURVE server with the key pair in ``secret_file`` (zmq.auth format) or given."""
    public, secret = secret_file if isinstance(secret_file, tuple) else load_curve_secret(secret_file)
    sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True


def check_bind(address: str) -> None:
    """Refuse a TCP port outside 0..65535: libzmq would take it modulo 65536 and listen elsewhere."""
    if address.startswith("tcp://") and ":" in address[6:]:
        port = address.rsplit(":", 1)[1]
        if port != "*" and (not port.isdigit() or int(port) > 65535):
            raise ListenError(f"cannot listen on {address}: port {port[:20]!r} is not a port from 0 to 65535")


def check_settings(workers: int | None, heartbeat: float, idle_timeout: float, max_clients: int = MAX_CLIENTS) -> None:
    """Refuse settings that would serve nothing or never send a heartbeat (a negative poll waits forever)."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    if max_clients < 1:
        raise ValueError(f"--max-clients must be at least 1, not {max_clients}")
    for name, value in (("--heartbeat", heartbeat), ("--idle-timeout", idle_timeout)):
        if not 0 < value < float("inf"):
            raise ValueError(f"{name} must be a positive number of seconds, not {value}")


class Server:
    """One serving process: a config, a bind address and ``workers`` worker processes."""

    def __init__(
        self,
        config: str | Path,
        bind: str = DEFAULT_BIND,
        workers: int | None = None,
        heartbeat: float = 0.5,
        idle_timeout: float = 900.0,
        curve_secret: str | Path | None = None,
        curve_clients: str | Path | None = None,
        max_clients: int = MAX_CLIENTS,
    ):
        check_settings(workers, heartbeat, idle_timeout, max_clients)
        self.max_clients = max_clients
        self.config = yaml_config = _read_config(config)
        self.dataset, loader = load_config(yaml_config)
        self.workers = int(workers or loader.num_workers or 1)
        self.fingerprint = fingerprint(self.dataset, yaml_config.get("transform"))
        self.bind_address, self.heartbeat, self.idle_timeout = bind, heartbeat, idle_timeout
        self._heard: dict[bytes, float] = {}  # client -> when it last sent anything
        # clients whose parts were cancelled because their queue was full: they hold that queue (memory)
        # until they read again or disconnect, so they count toward ``max_clients`` until then
        self._cut: set[bytes] = set()
        self.curve_secret, self.curve_clients = curve_secret, curve_clients
        if (curve_secret is None) != (curve_clients is None):
            raise ValueError("CURVE needs both the server's secret key file and the folder of allowed client keys")
        self._curve_keys = load_curve_secret(curve_secret) if curve_secret is not None else None
        if curve_clients is not None and not Path(curve_clients).is_dir():
            raise ValueError(f"--curve-clients {curve_clients} is not a folder of allowed trainers' public keys")
        self.rejected = 0
        self.endpoint = ""
        self.worker_pids: list[int] = []
        self._zmq: Any = None  # set by run

    def run(self, on_ready: Any = None) -> None:
        """Start the workers, bind, and serve until killed."""
        self._zmq = zmq = require_zmq()
        check_bind(self.bind_address)
        # locked while this server (or a worker) runs: a later server removes it once nobody holds it
        tmp, lock = make_socket_folder()
        endpoints = [f"ipc://{tmp}/worker-{i}" for i in range(self.workers)]
        # fork the workers before this process creates any ZMQ context or thread
        mp = multiprocessing.get_context("fork")
        procs = [mp.Process(target=run_worker, args=(i, e, self.dataset), daemon=True) for i, e in enumerate(endpoints)]
        previous, ctx, auth = None, None, None
        try:
            _start_workers(procs)
            previous = _on_sigterm(_interrupt)  # SIGTERM shuts down as Ctrl-C does (after the fork: not in workers)
            ctx = zmq.Context()
            front = ctx.socket(zmq.ROUTER)
            front.linger = 0
            front.sndhwm = MAX_QUEUED  # per connection; a full queue or a gone peer fails the send
            front.router_mandatory = True  # (instead of dropping the message unseen)
            if self.curve_secret is not None:
                from zmq.auth.thread import ThreadAuthenticator

                auth = ThreadAuthenticator(ctx)
                auth.start()
                auth.configure_curve(domain="*", location=str(self.curve_clients))
                curve_server(front, self._curve_keys)
            try:
                front.bind(self.bind_address)
            except zmq.ZMQError as e:
                raise ListenError(f"cannot listen on {self.bind_address}: {zmq.strerror(e.errno)}") from e
            self.endpoint = front.getsockopt_string(zmq.LAST_ENDPOINT)
            back = []
            for e in endpoints:
                s = ctx.socket(zmq.PAIR)
                s.linger = 0
                s.bind(e)
                back.append(s)
            self.worker_pids = [p.pid for p in procs]
            if on_ready:
                on_ready(self)
            self._loop(zmq, front, back, procs)
        finally:
            if auth is not None:
                auth.stop()
            if ctx is not None:
                ctx.destroy(linger=0)
            _stop_workers(procs)
            shutil.rmtree(tmp, ignore_errors=True)  # after the workers are gone: none can recreate a socket file
            os.close(lock)
            _on_sigterm(previous)

    def _loop(self, zmq: Any, front: Any, back: list[Any], procs: list[Any]) -> None:
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        for s in back:
            poller.register(s, zmq.POLLIN)
        owner: dict[tuple[bytes, int], int] = {}  # (client, assignment) -> worker
        alive = [True] * len(procs)
        next_beat = 0.0
        while True:
            for sock, _ in poller.poll(timeout=self.heartbeat * 500):
                if sock is front:
                    self._request(front, back, owner, alive)
                    continue
                frames = sock.recv_multipart(copy=False)
                client = frames[0].bytes
                sent = self._send(front, frames, copy=False)
                if sent is False:
                    self._expire(client, back, owner, f"is not reading ({MAX_QUEUED} messages wait)")
                    self._cut.add(client)
                elif sent is None:
                    self._expire(client, back, owner, "disconnected")
                if len(frames) == 2:  # header only: an end or an error (its text clipped to MAX_TEXT)
                    header = json.loads(frames[1].bytes)
                    if header.get("type") in ("end", "error"):
                        owner.pop((client, header.get("assignment")), None)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat
                if len(self._heard) > 2 * len(owner) + 1024:
                    self._forget_idle(owner)
                for client in {c for c, _ in owner}:  # only trainers waiting on a part watch the beat
                    if now - self._heard.get(client, now) > self.idle_timeout:
                        self._expire(client, back, owner, f"silent for {self.idle_timeout:g}s")
                        continue
                    # a full queue: a trainer busy elsewhere (a long validation), so wait; a connection that
                    # is gone never comes back under this id (a reconnect is a new one): free its parts now
                    if self._send(front, [client, *control("heartbeat")]) is None:
                        self._expire(client, back, owner, "disconnected")
                for client in [c for c in self._cut if self._send(front, [c, *control("heartbeat")]) is not False]:
                    self._cut.discard(client)  # its queue has room again (it reads), or it is gone
                for i, p in enumerate(procs):
                    if alive[i] and not p.is_alive():
                        alive[i] = False
                        self._lost_worker(i, p.exitcode, front, owner)

    def _request(self, front: Any, back: list[Any], owner: dict, alive: list[bool]) -> None:
        frames = front.recv_multipart(copy=False)
        client = frames[0].bytes
        self._heard[client] = time.monotonic()
        try:
            header, _ = unpack(frames[1:], max_message=MAX_REQUEST)
            check_request(header)  # type, fields and values, before any of it is used
            kind = header["type"]
            if kind == "hello":
                reply = {"workers": sum(alive), "fingerprint": self.fingerprint, "pid": os.getpid()}
                self._send(front, [client, *control("hello", **reply, rejected=self.rejected)])
            elif kind == "assign":
                part = Part.from_header(header)
                _check_new_part(client, part.assignment, owner, self.max_clients, self._cut)
                live = [i for i in range(len(back)) if alive[i]]
                if not live:
                    raise WireError("this server has no live worker left")
                load = {i: 0 for i in live}
                for w in owner.values():
                    if w in load:
                        load[w] += 1
                worker = min(live, key=lambda i: load[i])
                owner[(client, part.assignment)] = worker
                back[worker].send_multipart([client, frames[1]], copy=False)
            elif kind in ("credit", "cancel"):
                key = (client, header.get("assignment"))
                if key in owner:
                    back[owner[key]].send_multipart([client, frames[1]], copy=False)
                    if kind == "cancel":
                        del owner[key]
                elif kind == "credit":  # expired here (or just ended: then the trainer ignores this)
                    message = "assignment expired or unknown here"
                    self._send(front, [client, *control("lost", assignment=key[1], message=message)])
        except WireError as e:
            self._reject(front, client, str(e))
        except Exception as e:  # a request this check did not foresee must not stop the server
            log.exception("request from %s failed", client.hex())
            self._reject(front, client, f"{type(e).__name__}: {e}"[:500])

    def _forget_idle(self, owner: dict) -> None:
        """Drop the last-heard times of clients without parts (any peer can connect; the table must not grow)."""
        busy = {c for c, _ in owner}
        for client in [c for c in self._heard if c not in busy]:
            del self._heard[client]

    def _reject(self, front: Any, client: bytes, message: str) -> None:
        """Answer a refused request, count it and log it; the server goes on serving."""
        self.rejected += 1
        log.warning("rejected a request (%d so far): %s", self.rejected, message)
        self._send(front, [client, *control("rejected", message=message, rejected=self.rejected)])

    def _send(self, front: Any, frames: list[Any], copy: bool = True) -> bool | None:
        """Send ``frames`` (routing id first) without waiting: True if sent; False when the client's queue
        is full (``MAX_QUEUED``), None when it is not connected (gone): then nothing is sent."""
        zmq = self._zmq
        try:
            front.send_multipart(frames, copy=copy, flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            return None
        return True

    def _expire(self, client: bytes, back: list[Any], owner: dict, why: str) -> None:
        """Cancel the parts of a trainer that is ``why`` (silent: gone, or dropped this server; not
        reading); if it comes back, its next credit is answered ``lost``."""
        keys = [key for key in owner if key[0] == client]
        if keys:
            log.warning("trainer %s %s: cancelling its %d parts", client.hex(), why, len(keys))
        for key in keys:
            back[owner.pop(key)].send_multipart([client, *control("cancel", assignment=key[1])])
        self._heard.pop(client, None)

    def _lost_worker(self, index: int, code: Any, front: Any, owner: dict) -> None:
        log.error("worker %d exited with code %s; its parts go back to their trainers", index, code)
        for (client, assignment), w in list(owner.items()):
            if w == index:
                message = f"worker {index} exited with code {code}"
                self._send(front, [client, *control("lost", assignment=assignment, message=message)])
                del owner[(client, assignment)]


def _check_new_part(client: bytes, assignment: int, owner: dict, max_clients: int, cut: set[bytes]) -> None:
    """Refuse an assignment id this client already runs (it would orphan the first pipeline in its
    worker for good), more parts than one trainer ever runs at once (each holds a pipeline), and a
    new trainer beyond ``max_clients`` (each connection may hold ``MAX_PARTS`` pipelines, and one
    ``cut`` off for not reading holds its full queue of batches here)."""
    if (client, assignment) in owner:
        raise WireError(f"assign: assignment {assignment} is already running for this client")
    parts = sum(1 for c, _ in owner if c == client)
    if parts >= MAX_PARTS:
        raise WireError(f"assign: this client already runs {MAX_PARTS} parts here, the most one trainer may")
    if not parts and client not in cut and len({c for c, _ in owner} | cut) >= max_clients:
        raise WireError(f"assign: this server already serves {max_clients} trainers, the most it takes at once")


def _on_sigterm(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM and return the previous one (only the main thread may)."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None  # a previous handler not set from Python cannot be put back
    return signal.signal(signal.SIGTERM, handler)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds ``run``: workers stopped, socket folder removed


def _start_workers(procs: list[Any]) -> None:
    """Start the worker processes with SIGINT blocked. Ctrl-C reaches the whole process group, and a
    worker ignores SIGINT only once it runs (``run_worker``): one that lands before would raise
    KeyboardInterrupt in the worker and print a traceback. Blocked, it waits and is discarded when
    the worker ignores SIGINT. This process's mask is put back after: a Ctrl-C that came meanwhile
    is delivered here then and unwinds ``run`` as usual."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for p in procs:
            p.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _stop_workers(procs: list[Any]) -> None:
    """Kill the worker processes that were started and reap them."""
    started = [p for p in procs if p.pid is not None]
    for p in started:
        p.kill()
    for p in started:
        p.join(5)


def _read_config(path: str | Path) -> dict[str, Any]:
    """The config file's sections, refused with the file, key and line where it cannot be read as one."""
    from shardpipe.configfile import read_config

    return read_config(path)
