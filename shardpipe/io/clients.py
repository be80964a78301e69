"""Filesystems for reading object stores, tried once a request: ``ReadOptions`` is the one retry policy.

The clients retry on their own: botocore (S3) up to 5 tries a request with its own backoff, gcsfs
(GCS) 6 tries with waits of 1 to 16 s, and gcsfs's probe of a bucket's layout (unless
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``) for up to 60 s. Under shardpipe's own retries that
multiplied: an S3 endpoint refusing connections took ~110 s to fail, a GCS one over 5 minutes. The
filesystems made here, for reading (a shard's size request and reads, listings, the CLI's existence
check), try each request once, so how long a store that cannot be reached takes to fail is set by
``ReadOptions`` alone. Writes keep the clients' own retries: shardpipe does not retry them.
"""

from __future__ import annotations

from typing import Any

#: connections one process may open to an S3 endpoint (botocore's default, 10, caps the window)
MAX_CONNECTIONS = 64
S3 = ("s3", "s3a")
GCS = ("gs", "gcs")


def reading_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` for reading ``url``: one try a request (S3 also a wide connection pool);
    what the user set wins."""
    opts = dict(storage_options or {})
    scheme = url.split("://", 1)[0]
    if scheme in S3:
        config = dict(opts.get("config_kwargs") or {})
        config.setdefault("max_pool_connections", MAX_CONNECTIONS)
        config.setdefault("retries", {"total_max_attempts": 1})
        opts["config_kwargs"] = config
    elif scheme in GCS:
        opts.setdefault("retry_timeout", 0)  # the layout probe: one try (a failed probe reads as a plain bucket)
    return opts


def reading_fs(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem and path to read ``url`` through (see :func:`reading_options`)."""
    import fsspec.core

    opts = reading_options(url, storage_options)
    if url.split("://", 1)[0] not in GCS:
        return fsspec.core.url_to_fs(url, **opts)
    from shardpipe.io.gcs import OneTryGCSFileSystem

    cls = OneTryGCSFileSystem
    return cls(**{**cls._get_kwargs_from_urls(url), **opts}), cls._strip_protocol(url)
