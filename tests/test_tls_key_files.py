"""A connection's client private key is loaded into its SSLContext without ever being
written to a file on disk (a crash could leave such a file behind)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmc.brokers.tls import context_from_base64
from testbed.mosquitto import MosquittoBroker, TlsMaterial
from tests.conftest import b64

# Run in a process of its own: an audit hook cannot be removed once added. It records
# every file opened for writing by path (tempfile.mkstemp, open(..., "w"), os.open).
PROBE = textwrap.dedent("""
    import json, os, sys

    written = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)):
            path, mode, flags = args
            writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT
            if (flags or 0) & writes or (mode and set(str(mode)) & set("wax+")):
                written.append(os.fsdecode(path))

    from mmc.brokers.tls import context_from_base64

    ca, cert, key = (open(p).read() for p in sys.argv[1:4])
    sys.addaudithook(hook)
    context_from_base64(ca, cert, key, reject_unauthorized=True)
    print(json.dumps(written))
""")


# MQTT 3.1.1 CONNECT: clean session, keepalive 10 s, client id "t".
CONNECT = bytes([0x10, 13, 0, 4, *b"MQTT", 4, 0x02, 0, 10, 0, 1, *b"t"])


def _write_material(tmp_path: Path, tls: TlsMaterial) -> list[str]:
    paths = []
    for name, data in (("ca", tls.ca_cert), ("cert", tls.client_cert), ("key", tls.client_key)):
        path = tmp_path / f"{name}.b64"
        path.write_text(b64(data))
        paths.append(str(path))
    return paths


def test_the_private_key_is_never_written_to_a_file(
    tmp_path: Path, tls_material: TlsMaterial
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *_write_material(tmp_path, tls_material)],
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert list(tmp.iterdir()) == []


def test_the_context_presents_the_client_certificate_and_leaks_no_descriptor(
    tls_material: TlsMaterial, broker: MosquittoBroker
) -> None:
    """The broker's mutual-TLS listener requires a client certificate: the handshake
    completes only if the key loaded from memory is really in the context."""
    assert broker.mtls_port is not None
    fds = len(os.listdir("/proc/self/fd"))
    ctx = context_from_base64(
        b64(tls_material.ca_cert),
        b64(tls_material.client_cert),
        b64(tls_material.client_key),
        reject_unauthorized=True,
    )
    assert len(os.listdir("/proc/self/fd")) == fds
    with (
        socket.create_connection(("127.0.0.1", broker.mtls_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        # TLS 1.3 reports a refused client certificate only at the first read: an MQTT
        # CONNECT is answered by a CONNACK (accepted or not) once the session stands.
        tls.sendall(CONNECT)
        try:
            assert tls.recv(1) == b"\x20"
        except ssl.SSLError as exc:
            pytest.fail(f"the broker refused the client certificate: {exc}")
