"""Pin the version of a remote object across the ranged requests that read it.

A remote shard is read as many ranged requests. If the object is replaced between two
of them, the reader would splice bytes of two versions. Each request therefore names
the version seen when the shard was opened: S3 ``If-Match: <ETag>``, GCS
``generation=<n>``, HTTP ``If-Match: <ETag>`` (strong ETags), else HTTP
``If-Unmodified-Since: <Last-Modified>``. A replaced object then fails the request (412
Precondition Failed, or 404 for a GCS generation that no longer exists), and the reader
reports the shard as changed instead of mixing versions. An HTTP server that ignores
these conditions still names the version in each response: one that names another is
:class:`VersionChanged`. Other filesystems are read unpinned.

An HTTP answer that is not the range asked for (a 200 for a range past byte 0, a 206
whose ``Content-Range`` starts elsewhere) is a :class:`CorruptShardError`: its bytes
would land at the wrong offset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from shardpipe.errors import CorruptShardError


@dataclass(frozen=True)
class Pin:
    """The version of one object: which store, which field, its value."""

    store: str  # "s3", "gcs" or "http"
    field: str  # "ETag", "generation" or (HTTP) "Last-Modified"
    value: str

    def __str__(self) -> str:
        return f"{self.field} {self.value}"


#: what an answer whose Content-Length is not its body's length says about the server
MISREPORTS = "the server misreports the length of its answers"
#: the request header that makes an HTTP server refuse (412) another version than the pinned one
_HTTP_CONDITION = {"ETag": "If-Match", "Last-Modified": "If-Unmodified-Since"}


class VersionChanged(Exception):
    """An HTTP response names another version than the pinned one (the server ignored the condition)."""


def _protocols(fs: Any) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def pin_of(fs: Any, info: dict[str, Any]) -> Pin | None:
    """The version named by ``fs.info()``'s answer, or None when it names none."""
    protocols = _protocols(fs)
    etag = info.get("ETag") or info.get("etag")
    if protocols & {"s3", "s3a"} and etag:
        return Pin("s3", "ETag", str(etag))
    if protocols & {"gs", "gcs"} and info.get("generation"):
        return Pin("gcs", "generation", str(info["generation"]))
    if protocols & {"http", "https"}:
        if etag and not str(etag).startswith("W/"):  # a weak ETag never matches If-Match
            return Pin("http", "ETag", str(etag))
        if info.get("Last-Modified"):
            return Pin("http", "Last-Modified", str(info["Last-Modified"]))
    return None


async def fetch_range(
    fs: Any, path: str, start: int, end: int, pin: Pin | None, first_byte: list[float] | None = None
) -> bytes:
    """Bytes ``start``..``end``-1 of the pinned version (any version when ``pin`` is None).

    ``first_byte`` gets the ``time.perf_counter()`` at which the response's headers
    arrived (S3 and HTTP). A server that answers with more than the range (it ignores
    Range) is a :class:`CorruptShardError` raised from the headers, before the body is read.
    """
    protocols = _protocols(fs)
    if protocols & {"s3", "s3a"}:  # s3fs's _cat_file takes no conditions: call GetObject directly
        bucket, key, _ = fs.split_path(path)
        cond = {"IfMatch": pin.value} if pin is not None and pin.store == "s3" else {}
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **cond)
        body = resp["Body"]
        try:
            if first_byte is not None:
                first_byte.append(time.perf_counter())
            length = resp.get("ContentLength")
            if not resp.get("ContentRange") and isinstance(length, int) and length > end - start:
                raise _range_ignored(path, start, end, 200, length)
            return await body.read()
        finally:
            body.close()
    if protocols & {"http", "https"}:
        return await _fetch_http(fs, path, start, end, pin, first_byte)
    if pin is not None and pin.store == "gcs":
        return await fs._cat_file(path, start=start, end=end, generation=pin.value)
    return await fs._cat_file(path, start=start, end=end)


async def _fetch_http(
    fs: Any, url: str, start: int, end: int, pin: Pin | None, first_byte: list[float] | None
) -> bytes:
    kw = dict(fs.kwargs)
    headers = {**kw.pop("headers", {}), "Range": f"bytes={start}-{end - 1}"}  # keep the user's headers
    if pin is not None:
        headers[_HTTP_CONDITION[pin.field]] = pin.value
    session = await fs.set_session()
    try:
        async with session.get(fs.encode_url(url), headers=headers, **kw) as r:
            if first_byte is not None:
                first_byte.append(time.perf_counter())
            fs._raise_not_found_for_status(r, url)  # 404: FileNotFoundError; 412 and others: ClientResponseError
            try:
                _check_http_answer(url, start, end, pin, r.status, r.headers, r.content_length)
            except Exception:
                r.close()  # drop the connection: the rest of the body is never read
                raise
            return await r.read()
    except Exception as e:
        unparsable = _not_http(url, start, end, e)
        if unparsable is None:
            raise
        raise unparsable from e


def _not_http(url: str, start: int, end: int, exc: BaseException) -> CorruptShardError | None:
    """The error for an answer aiohttp could not parse (its message quotes the raw bytes, binary and all),
    in plain words; None for other errors."""
    e: BaseException | None = exc
    while e is not None and type(e).__name__ != "HttpProcessingError":
        e = e.__cause__
    if e is None:
        return None
    asked = f"{url}: asked for bytes {start}-{end - 1} ({end - start} bytes)"
    what = str(getattr(e, "message", "") or e)
    if what.startswith("Data after"):  # aiohttp read Content-Length bytes and more followed
        return CorruptShardError(
            f"{asked}, the server's answer held more bytes than its Content-Length header declares: {MISREPORTS}"
        )
    first = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in what.partition("\n")[0])[:120]
    return CorruptShardError(f"{asked}, the server's answer is not valid HTTP: {first}")


def _check_http_answer(
    url: str, start: int, end: int, pin: Pin | None, status: int, headers: Any, length: int | None
) -> None:
    """Raise unless the response holds bytes ``start``.. of the pinned version."""
    seen = headers.get(pin.field) if pin is not None else None
    if pin is not None and seen is not None and seen != pin.value:
        raise VersionChanged(f"the response for bytes {start}-{end - 1} has {pin.field} {seen}")
    if status != 206:
        if start > 0 or length is None or length > end - start:  # a 200 holds the object from byte 0
            raise _range_ignored(url, start, end, status, length)
        return
    first, _, rest = (headers.get("Content-Range") or "").removeprefix("bytes ").partition("-")
    last = rest.partition("/")[0]
    if not (first.isdigit() and last.isdigit()) or int(first) != start or not start <= int(last) < end:
        raise CorruptShardError(
            f"{url}: asked for bytes {start}-{end - 1}, the server answered 206 with Content-Range "
            f"{headers.get('Content-Range')!r}: the server does not send the range asked for"
        )
    span = int(last) - int(first) + 1
    if length is not None and length < span:  # (the bytes past it would be taken for the next answer's)
        raise CorruptShardError(
            f"{url}: asked for bytes {start}-{end - 1} ({end - start} bytes), the server's answer declares "
            f"Content-Length {length} for Content-Range {headers.get('Content-Range')!r} ({span} bytes): "
            f"{MISREPORTS}"
        )


def _range_ignored(url: str, start: int, end: int, status: int, length: int | None) -> CorruptShardError:
    size = "an unknown number of" if length is None else str(length)
    return CorruptShardError(
        f"{url}: asked for bytes {start}-{end - 1}, the server answered {status} with {size} bytes: "
        "the server ignores Range requests (the response was dropped after its headers)"
    )


def is_version_gone(exc: BaseException, pin: Pin | None) -> bool:
    """True when ``exc`` says the pinned version is no longer the object's (it was replaced or deleted)."""
    if pin is None:
        return False
    if isinstance(exc, VersionChanged):
        return True
    if pin.store == "gcs":
        return isinstance(exc, FileNotFoundError)
    for e in (exc, exc.__cause__):
        if e is None:
            continue
        if getattr(e, "status", None) == 412:  # aiohttp ClientResponseError
            return True
        code = getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(e, "response") else None
        if code == "PreconditionFailed":  # botocore ClientError (s3fs wraps it in an OSError)
            return True
    return False
