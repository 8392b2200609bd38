"""The HTTP edge of a real `mmc serve` process: connection caps, requests aiohttp's parser
refuses, clients that go away, and running out of file descriptors."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from testbed.serve import MmcServer
from tests.conftest import wait_until

HOST = "127.0.0.1"


async def raw_request(
    port: int, data: bytes, *, source: str | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange on a new connection: status, headers (lower-case) and body."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            HOST, port, local_addr=(source, 0) if source else None
        )
        try:
            writer.write(data)
            await writer.drain()
            answer = await read_response(reader)
            # Until the server closes (Connection: close): it has let go of the connection
            # then, and no longer counts it. (A refused connection is reset: the request
            # was never read.)
            with suppress(ConnectionResetError):
                while await reader.read(65536):
                    pass
            return answer
        finally:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def get(path: str = "/healthz") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()


@asynccontextmanager
async def idle_connections(
    port: int, count: int, *, source: str | None = None
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    streams = []
    try:
        for _ in range(count):
            streams.append(
                await asyncio.open_connection(
                    HOST, port, local_addr=(source, 0) if source else None
                )
            )
        yield streams
    finally:
        for _, writer in streams:
            writer.close()


def error_body(body: bytes, status: int) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    assert document["status"] == status
    assert set(document) <= {"code", "message", "status", "info"}
    return document


async def test_connections_over_the_caps_are_answered_and_closed(tmp_path: Path) -> None:
    with MmcServer(
        tmp_path,
        env={
            "MMC_HTTP_MAX_CONNECTIONS": "6",
            "MMC_HTTP_MAX_CONNECTIONS_PER_ADDRESS": "3",
            "MMC_TRUSTED_PROXIES": "127.0.0.3",
        },
    ) as server:
        await server.wait_ready()
        port = server.port
        async with idle_connections(port, 3) as first:
            # The fourth connection from 127.0.0.1 is refused at once, in the error shape.
            status, headers, body = await raw_request(port, get())
            assert status == 429
            assert headers["retry-after"] == "1"
            assert error_body(body, 429)["code"] == "TOO_MANY_REQUESTS"
            # Another address is not affected.
            assert (await raw_request(port, get(), source="127.0.0.2"))[0] == 200
            # A trusted proxy's connections are only counted in the total: 3 + 3 = 6.
            async with idle_connections(port, 3, source="127.0.0.3"):
                status, _, body = await raw_request(port, get(), source="127.0.0.4")
                assert status == 503
                assert error_body(body, 503)["code"] == "BUSY"
            # Closing one of the first three makes room for the next.
            first[0][1].close()
            await wait_until(lambda: _answers(port), timeout=5, detail=server.output)
            metrics = (await raw_request(port, get("/metrics"), source="127.0.0.2"))[2].decode()
            # (At least: a connection closed by the client may not be gone yet on the server.)
            assert _sample(metrics, 'mmc_http_connections_refused_total{cap="address"}') >= 1
            assert _sample(metrics, 'mmc_http_connections_refused_total{cap="total"}') >= 1
            # The two left of the first three, and this one.
            assert _sample(metrics, "mmc_http_connections_open") >= 3
        output = server.output()
        assert "over http_max_connections_per_address" in output
        assert "Traceback" not in output


def _sample(metrics: str, name: str) -> float:
    [value] = [line.split()[-1] for line in metrics.splitlines() if line.startswith(name + " ")]
    return float(value)


async def _answers(port: int) -> bool:
    try:
        return (await raw_request(port, get(), timeout=2))[0] == 200
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


async def test_parser_errors_are_in_the_error_shape_and_quiet(tmp_path: Path) -> None:
    with MmcServer(tmp_path, env={"MMC_LOG_LEVEL": "DEBUG"}) as server:
        await server.wait_ready()
        for data in (
            f"GET /{'x' * 9000} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(),
            f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {'y' * 9000}\r\n\r\n".encode(),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS to an HTTP port\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ):
            status, headers, body = await raw_request(server.port, data)
            assert status == 400, body
            assert headers["content-type"].startswith("application/json")
            assert error_body(body, 400)["code"] == "INVALID"
        assert (await raw_request(server.port, get()))[0] == 200
        output = server.output()
        assert "Traceback" not in output
        assert " ERROR " not in output


async def test_a_client_dropping_mid_body_is_a_debug_line(tmp_path: Path) -> None:
    with MmcServer(tmp_path, env={"MMC_LOG_LEVEL": "DEBUG"}) as server:
        await server.wait_ready()
        for _ in range(3):
            _reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(
                b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"username": '
            )
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.close()
        await wait_until(
            lambda: server.output().count("client gone during POST /auth") == 3,
            timeout=5,
            detail=server.output,
        )
        assert (await raw_request(server.port, get()))[0] == 200
        output = server.output()
        assert "Traceback" not in output
        assert " ERROR " not in output


async def test_running_out_of_file_descriptors_logs_a_few_lines_and_recovers(
    tmp_path: Path,
) -> None:
    with MmcServer(tmp_path, nofile=128, env={"MMC_HTTP_HEADER_TIMEOUT": "3"}) as server:
        await server.wait_ready()
        assert "open-file limit (128" in server.output()
        sockets: list[socket.socket] = []
        try:
            # Far more connections than descriptors: the kernel completes them into the
            # listen queue; mmc's accept() fails with EMFILE over and over.
            for _ in range(300):
                sock = socket.socket()
                sock.setblocking(False)
                with suppress(BlockingIOError):
                    sock.connect((HOST, server.port))
                sockets.append(sock)
            await asyncio.sleep(4)
            assert server.returncode is None
        finally:
            for sock in sockets:
                sock.close()
        # The header timeout frees what was accepted; accepting resumes.
        await wait_until(lambda: _answers(server.port), timeout=15, detail=server.output)
        metrics = (await raw_request(server.port, get("/metrics")))[2].decode()
        assert _sample(metrics, "mmc_http_accept_errors_total") >= 1
        output = server.output()
        failures = [line for line in output.splitlines() if "accept() failed" in line]
        assert 1 <= len(failures) <= 3, failures
        assert "Too many open files" in failures[0]
        assert "Traceback" not in output
        assert len(output.splitlines()) < 60, output
