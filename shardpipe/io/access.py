"""Requests the store refused for want of credentials: named with the URL and what to set.

S3 (s3fs) reports a 403 as ``PermissionError('Forbidden')`` and missing credentials as
botocore's ``NoCredentialsError``; HTTP (fsspec) folds a 401 or 403 into a
``FileNotFoundError``; GCS (gcsfs) raises a plain ``OSError('Forbidden: ...')`` or an
``HttpError`` with code 401. None of these is worth a retry, none is a missing shard,
and none says what to do: :func:`denied` recognises them, :func:`access_error` says it.
"""

from __future__ import annotations

#: what to set, by scheme
_HINTS = {
    "s3": (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass storage_options "
        '{"key": ..., "secret": ...}; for a public bucket, storage_options {"anon": true}'
    ),
    "gs": (
        "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or run `gcloud auth "
        'application-default login`), or pass storage_options {"token": ...}; for a public bucket, '
        'storage_options {"token": "anon"}'
    ),
    "http": (
        "the server wants credentials: pass them in storage_options, e.g. "
        '{"client_kwargs": {"headers": {"Authorization": "Bearer ..."}}}'
    ),
}
_SCHEMES = {"s3a": "s3", "gcs": "gs", "https": "http"}
_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError")


class AccessDeniedError(PermissionError):
    """The store refused the request (401/403) or no credentials were found: not retried, not skipped."""


def denied(exc: BaseException) -> str | None:
    """Why ``exc`` (or an error it was raised from) is a refused request, else ``None``."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if isinstance(e, AccessDeniedError):
            return str(e)
        if name in _NO_CREDENTIALS:
            return f"no credentials found ({e})"
        status = getattr(e, "code", None) if name == "HttpError" else getattr(e, "status", None)
        if name in ("ClientResponseError", "HttpError") and status in (401, 403):
            return f"{status} {'Unauthorized' if status == 401 else 'Forbidden'}"
        if isinstance(e, PermissionError) or (type(e) is OSError and str(e).startswith("Forbidden")):
            first = (str(e).splitlines() or ["Forbidden"])[0]
            return "403 Forbidden" if first.startswith("Forbidden") else first
        e = e.__cause__
    return None


def access_error(url: str, exc: BaseException) -> AccessDeniedError | None:
    """An :class:`AccessDeniedError` naming ``url`` and what to set when ``exc`` is a refused request."""
    reason = denied(exc)
    if reason is None:
        return None
    if isinstance(exc, AccessDeniedError):
        return exc
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    hint = _HINTS.get(_SCHEMES.get(scheme, scheme), "check the credentials in storage_options")
    return AccessDeniedError(f"{url}: access denied ({reason}); {hint}")
