"""A real nginx reverse proxy for tests, on a free loopback port, stopped by its pid."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from testbed import processes

NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_available() -> str | None:
    if not (os.path.isfile(NGINX_BIN) and os.access(NGINX_BIN, os.X_OK)):
        return f"nginx not found at {NGINX_BIN!r} (make test installs Debian's nginx)"
    return None


class Nginx:
    def __init__(self, workdir: Path, server_block: str) -> None:
        self.workdir = workdir
        self.server_block = server_block
        self._proc: subprocess.Popen[bytes] | None = None

    def _conf(self) -> str:
        w = self.workdir
        user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
        return f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {w}/nginx.pid;
error_log {w}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {w}/access.log;
    client_body_temp_path {w}/client_body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    {self.server_block}
}}
"""

    def start(self, port: int, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self._conf())
        with (self.workdir / "nginx.out").open("wb") as log:
            self._proc = subprocess.Popen(
                [NGINX_BIN, "-c", str(conf), "-p", str(self.workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log_text()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {port}: {self.log_text()}")

    def stop(self) -> None:
        if self._proc is not None:
            processes.stop(self._proc, 5, signal.SIGQUIT)  # nginx's graceful shutdown

    def log_text(self) -> str:
        parts = []
        for name in ("nginx.out", "error.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
