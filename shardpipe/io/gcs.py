"""gcsfs's filesystem with each request tried once, for reading: shardpipe's ``ReadOptions`` retry instead.

gcsfs retries every request 6 times (waits of about 1, 2, 4, 8 and 16 s) by a decorator, with no
option to change it; under shardpipe's own retries a GCS endpoint refusing connections ran for
over 5 minutes before an error. Imported only when a ``gs://`` URL is read (it imports gcsfs).
"""

from __future__ import annotations

import gcsfs
from gcsfs.core import GCSFileSystem as _Core


class OneTryGCSFileSystem(gcsfs.GCSFileSystem):  # type: ignore[misc]
    """The class gcsfs picks for ``gs://`` (``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` chooses which) with its
    HTTP requests sent once: the request without gcsfs's retry decorator (which would also log each
    failure with its traceback as "out of retries"). A named module-level class, so instances pickle."""

    # (a gcsfs without the decorator keeps its own retries: still bounded, by each try's deadline)
    _request = getattr(_Core._request, "__wrapped__", _Core._request)
