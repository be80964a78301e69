"""Pin the version of a remote object across the ranged requests that read it.

A remote shard is read as many ranged requests. If the object is replaced between two
of them, the reader would splice bytes of two versions. Each request therefore names
the version seen when the shard was opened: S3 ``If-Match: <ETag>``, GCS
``generation=<n>``, HTTP ``If-Match: <ETag>`` (strong ETags only). A replaced object
then fails the request (412 Precondition Failed, or 404 for a GCS generation that no
longer exists), and the reader reports the shard as changed instead of mixing versions.
Other filesystems are read unpinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pin:
    """The version of one object: which store, which field, its value."""

    store: str  # "s3", "gcs" or "http"
    field: str  # "ETag" or "generation"
    value: str

    def __str__(self) -> str:
        return f"{self.field} {self.value}"


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
    if protocols & {"http", "https"} and etag and not str(etag).startswith("W/"):
        return Pin("http", "ETag", str(etag))  # a weak ETag never matches If-Match
    return None


async def fetch_range(fs: Any, path: str, start: int, end: int, pin: Pin | None) -> bytes:
    """Bytes ``start``..``end``-1 of the pinned version (any version when ``pin`` is None)."""
    if pin is None:
        return await fs._cat_file(path, start=start, end=end)
    if pin.store == "s3":  # s3fs's _cat_file takes no conditions: call GetObject directly
        bucket, key, _ = fs.split_path(path)
        resp = await fs._call_s3(
            "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", IfMatch=pin.value
        )
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()
    if pin.store == "gcs":
        return await fs._cat_file(path, start=start, end=end, generation=pin.value)
    headers = {**fs.kwargs.get("headers", {}), "If-Match": pin.value}  # keep the user's headers
    return await fs._cat_file(path, start=start, end=end, headers=headers)


def is_version_gone(exc: BaseException, pin: Pin | None) -> bool:
    """True when ``exc`` says the pinned version is no longer the object's (it was replaced or deleted)."""
    if pin is None:
        return False
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
