"""`python -m mmc serve` in a process of its own, for the tests and the benchmarks.

Its output goes to a file, never to a pipe: a pipe nobody reads fills at 64 KiB and then
blocks mmc in the middle of a log line (a SIGTERM test hung for 120 s that way).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import aiohttp

from testbed import processes
from testbed.mosquitto import HOST, free_port

__all__ = ["MmcServer", "listen_port"]

REPO = Path(__file__).resolve().parent.parent


def listen_port() -> int:
    """A free port for mmc's HTTP listener. ``free_port`` hands out ports below the
    ephemeral range: mmc opens its broker connections before it binds its HTTP port, and
    with a thousand of them one could take an ephemeral one."""
    return free_port()


class MmcServer:
    """``python -m mmc serve`` on 127.0.0.1, with its store in ``workdir/data`` and its
    output (stdout and stderr) appended to ``workdir/mmc.log``.

    Settings come from ``env`` only: the inherited ``MMC_*`` variables (but the tests'
    own ``MMC_TEST_*``) are dropped, and it runs in ``workdir`` so that no
    ``config/mmc.toml`` is picked up by accident. ``nofile`` runs it under that open-file
    limit (soft and hard). Used as a context manager it is started on entry and stopped
    on exit. It is signalled by its pid only.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        admin_password: str | None = None,
        nofile: int | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        # A command mmc runs under (``valgrind --tool=callgrind``, for bench.cpu).
        self.wrapper = tuple(wrapper)
        self.data_dir = workdir / "data"
        self.port = listen_port()
        self.password = admin_password or secrets.token_urlsafe(16)
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = workdir / "mmc.log"
        self.extra_env = dict(env or {})
        self.nofile = nofile
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this start's output begins in the log
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def _process(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "mmc was not started"
        return self._proc

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MMC_") or k.startswith("MMC_TEST")
        }
        env.update(
            {
                "MMC_HOST": HOST,
                "MMC_PORT": str(self.port),
                "MMC_DATA_DIR": str(self.data_dir),
                "MMC_ADMIN_PASSWORD": self.password,
                "PYTHONPATH": str(REPO),
            }
        )
        env.update(self.extra_env)
        argv = [*self.wrapper, sys.executable, "-m", "mmc", "serve"]
        if self.nofile is not None:
            # Set in the child before it becomes mmc.
            setup = (
                "import os, resource, sys; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, ({self.nofile}, {self.nofile})); "
                "os.execv(sys.executable, sys.argv[1:])"
            )
            argv = [sys.executable, "-c", setup, *argv]
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/readyz`` answers 200 (start-up finished, the store answers)."""
        deadline = time.monotonic() + timeout
        while not await self._ready():
            if self.returncode is not None:
                raise RuntimeError(
                    f"mmc exited with {self.returncode} during start-up:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"mmc not ready within {timeout} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def _ready(self) -> bool:
        # A bare HTTP/1.1 exchange read until mmc closes the connection: once this returns,
        # mmc has let go of it, and tests that count connections find none left over.
        request = f"GET /readyz HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nConnection: close\r\n\r\n"
        try:
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection(HOST, self.port)
                try:
                    writer.write(request.encode())
                    await writer.drain()
                    answer = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return False
        return answer.startswith(b"HTTP/1.1 200 ")

    @property
    def returncode(self) -> int | None:
        """The exit status once it has ended, else None."""
        return self._process.poll()

    def send_signal(self, sig: signal.Signals) -> None:
        self._process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Its exit status; raises ``subprocess.TimeoutExpired`` if it runs on."""
        return self._process.wait(timeout)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; reaps it either way."""
        if self._proc is not None:
            processes.stop(self._proc, timeout)

    def __enter__(self) -> MmcServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def output(self) -> str:
        """What this start wrote so far (the log also holds earlier starts')."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        """User and system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        # utime and stime, fields 14 and 15 of proc(5), counted after the command name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def admin_token(self, name: str | None = None) -> str:
        """Log in as the admin (cookie) and create an admin application token."""
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address
        async with aiohttp.ClientSession(self.base_url, cookie_jar=jar) as session:
            async with session.post(
                "/auth", json={"username": "admin", "password": self.password}
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"login failed: {resp.status} {await resp.text()}")
            async with session.post(
                "/api/tokens",
                json={"name": name or f"testbed-{secrets.token_hex(3)}", "role": "admin"},
                headers={"Origin": self.base_url},
            ) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"token failed: {resp.status} {await resp.text()}")
                token: str = (await resp.json())["token"]
                return token

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"{self.base_url}/metrics") as resp:
            return await resp.text()
