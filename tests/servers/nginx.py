"""nginx serving a directory over HTTP on 127.0.0.1 (range requests work on static files).

The same files are served under ``/norange/`` (Range ignored), ``/forbidden/`` (403) and
``/login/`` (401 without the basic-auth user ``USER``:``PASSWORD``).
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from .procs import ChildProcess, find_binary, free_port

USER, PASSWORD = "reader", "shardpipe-test-password"

CONFIG = """\
{user}
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port};
        root {docroot};
        location / {{ }}
        location /norange/ {{ alias {docroot}/; max_ranges 0; }}
        location /forbidden/ {{ alias {docroot}/; deny all; }}
        location /login/ {{ alias {docroot}/; auth_basic "shardpipe"; auth_basic_user_file {root}/htpasswd; }}
    }}
}}
"""


class Nginx:
    """nginx in the foreground (a child of the test process) serving ``docroot``."""

    def __init__(self, root: Path, docroot: Path):
        binary = find_binary("nginx", "/usr/sbin/nginx")
        if binary is None:
            raise FileNotFoundError("nginx not found: apt-get install nginx-light")
        self.root = root
        self.docroot = docroot
        self.port = free_port()
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        docroot.mkdir(parents=True, exist_ok=True)
        (root / "htpasswd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        conf = root / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""  # else workers read as 'nobody'
        conf.write_text(CONFIG.format(user=user, root=root, port=self.port, docroot=docroot))
        argv = [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
        self.child = ChildProcess(argv, root / "stdout.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    def start(self, timeout: float = 20) -> Nginx:
        self.child.start()
        self.child.wait_ready(self._ready, timeout, "nginx")
        return self

    def stop(self) -> None:
        self.child.stop()

    def _ready(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint}/", timeout=2).close()
        except urllib.error.HTTPError:
            pass  # 403/404 from nginx: it is serving
        return True
