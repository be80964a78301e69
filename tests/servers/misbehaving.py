"""An HTTP server on 127.0.0.1 that misbehaves on request, as real servers and proxies do.

nginx answers by the book; this one serves objects put into it and, per object, can:
lie about ``Content-Length`` (``length_delta``: shorter sends the whole body, longer closes
early), ignore ``Range`` (``ignore_range``), answer every ranged request with one status
(``range_status``, e.g. 416), serve another range than the one asked and name it
(``range_shift``), replace the object after ``change_after`` GETs without honouring
``If-Match`` (by ``replacement``, with a new ETag and Last-Modified), redirect (``redirect``: a path or
a full URL, e.g. on another server; a loop when it names itself), answer with
``status`` and an HTML page, or accept a request and wait ``stall`` seconds before answering it. Every request is logged as ``(method, path, Range)``.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.parse
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

HTML = b"<html><head><title>Oops</title></head><body><h1>Something went wrong</h1></body></html>\n"


@dataclass
class Behaviour:
    """How one object is served (the defaults: by the book)."""

    length_delta: int = 0  # added to Content-Length of GET responses (the body sent is the true one)
    ignore_range: bool = False  # 200 with the whole body for ranged GETs
    range_status: int | None = None  # every ranged GET answered with this status and an HTML body
    range_shift: int = 0  # ranged GETs get the bytes this far earlier, with a Content-Range that says so
    change_after: int | None = None  # after this many GETs the object is replaced (If-Match ignored)
    replacement: bytes | None = None  # what replaces it (default: every byte inverted; same size)
    etag: bool = True  # send ETag (else only Last-Modified)
    redirect: str | None = None  # Location of a 302 for every request
    redirect_status: int = 302
    status: int | None = None  # every request answered with this status and an HTML body
    stall: float = 0.0  # seconds each request waits, once read, before it is answered
    stall_gets: bool = False  # only GETs stall (a HEAD, an existence check, is answered at once)


class _Object:
    def __init__(self, data: bytes, behaviour: Behaviour, version: int = 0):
        self.data, self.behaviour, self.version, self.gets = data, behaviour, version, 0

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'

    @property
    def last_modified(self) -> str:
        return formatdate(1_700_000_000 + self.version, usegmt=True)


class _QuietServer(ThreadingHTTPServer):
    """A client hanging up mid-answer is what these tests do: counted, not printed as a traceback."""

    dropped = 0

    def handle_error(self, request: object, client_address: object) -> None:
        type(self).dropped += 1


class MisbehavingServer:
    """``put(name, data, **behaviour)`` then read ``url(name)``; ``log`` lists the requests."""

    def __init__(self) -> None:
        self.objects: dict[str, _Object] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="misbehaving-http")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.endpoint}/{name}"

    def put(self, name: str, data: bytes, **behaviour: object) -> str:
        """Serve ``data`` at ``/name`` as ``behaviour`` says; returns its URL."""
        with self.lock:
            self.objects["/" + name] = _Object(data, Behaviour(**behaviour))  # type: ignore[arg-type]
        return self.url(name)

    def requests(self, method: str | None = None) -> list[tuple[str, str, str | None]]:
        with self.lock:
            return [r for r in self.log if method is None or r[0] == method]

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    server_state: MisbehavingServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        state = self.server_state
        rng = self.headers.get("Range")
        with state.lock:
            state.log.append((self.command, self.path, rng))
            obj = state.objects.get(urllib.parse.unquote(self.path.partition("?")[0]))  # the query is not the name
            if obj is not None and not head:
                obj.gets += 1
                b = obj.behaviour
                if b.change_after is not None and obj.gets > b.change_after and obj.version == 0:
                    obj.data = b.replacement if b.replacement is not None else bytes(x ^ 0xFF for x in obj.data)
                    obj.version = 1
            data = obj.data if obj is not None else b""
        if obj is None:
            return self._html(404, head)
        b = obj.behaviour
        if b.stall and not (head and b.stall_gets):
            time.sleep(b.stall)
        if b.redirect is not None:
            self.send_response(b.redirect_status)
            self.send_header("Location", b.redirect)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if b.status is not None:
            return self._html(b.status, head)
        if head:
            self.send_response(200)
            self._object_headers(obj, len(data))
            return self.end_headers()
        if rng is not None and b.range_status is not None:
            return self._html(b.range_status, head)
        if rng is None or b.ignore_range:
            return self._body(200, obj, data, None)
        start, end = _parse_range(rng, len(data))
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        start = max(0, start - b.range_shift)
        end = max(start, end - b.range_shift)
        self._body(206, obj, data[start : end + 1], f"bytes {start}-{end}/{len(data)}")

    def _object_headers(self, obj: _Object, length: int) -> None:
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", obj.last_modified)
        if obj.behaviour.etag:
            self.send_header("ETag", obj.etag)

    def _body(self, status: int, obj: _Object, body: bytes, content_range: str | None) -> None:
        delta = obj.behaviour.length_delta
        self.send_response(status)
        self._object_headers(obj, len(body) + delta)
        if content_range is not None:
            self.send_header("Content-Range", content_range)
        if delta:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _html(self, status: int, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(HTML)))
        self.end_headers()
        if not head:
            self.wfile.write(HTML)


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """``bytes=a-b`` (or ``a-``) -> (a, b) with b clamped to the object."""
    first, _, last = header.removeprefix("bytes=").partition("-")
    return int(first), min(int(last) if last else size - 1, size - 1)
