"""Prove that testbed/mosquitto.py starts real, usable mosquitto brokers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from testbed.mosquitto import (
    Mosquitto,
    MosquittoBroker,
    TlsMaterial,
    client_ssl_context,
    make_tls_material,
)

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

STEP_TIMEOUT = 10.0


@pytest.fixture(scope="session")
def tls_material() -> TlsMaterial:
    return make_tls_material()


@pytest.fixture
def broker(
    tmp_path: Path, tls_material: TlsMaterial, mosquitto: Mosquitto
) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker", tls_material, mosquitto=mosquitto) as running:
        yield running


def _client(
    broker: MosquittoBroker, port: int, tls_context: ssl.SSLContext | None = None
) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        port,
        username=broker.admin_username,
        password=broker.admin_password,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls_context,
        timeout=5,
    )


async def _list_clients(client: aiomqtt.Client, correlation: str) -> dict[str, object]:
    await client.subscribe("$CONTROL/dynamic-security/v1/response")
    request = {"commands": [{"command": "listClients", "correlationData": correlation}]}
    await client.publish("$CONTROL/dynamic-security/v1", json.dumps(request), qos=0)
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        body = json.loads(message.payload)
        for response in body["responses"]:
            if response.get("correlationData") == correlation:
                assert isinstance(response, dict)
                return response
    raise AssertionError("message stream ended")


async def _assert_admin_works(client: aiomqtt.Client, broker: MosquittoBroker) -> None:
    response = await _list_clients(client, "abc")
    assert "error" not in response, response
    data = response["data"]
    assert isinstance(data, dict)
    assert broker.admin_username in data["clients"]


async def test_dynsec_over_plain_port(broker: MosquittoBroker) -> None:
    async with asyncio.timeout(STEP_TIMEOUT), _client(broker, broker.port) as client:
        await _assert_admin_works(client, broker)


async def _broker_control(client: aiomqtt.Client, command: str) -> dict[str, Any]:
    await client.subscribe("$CONTROL/broker/v1/response")
    await client.publish("$CONTROL/broker/v1", json.dumps({"commands": [{"command": command}]}))
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        [response] = json.loads(message.payload)["responses"]
        assert isinstance(response, dict)
        return response
    raise AssertionError("message stream ended")


async def test_runs_the_version_asked_for(broker: MosquittoBroker, mosquitto: Mosquitto) -> None:
    """The broker is the version its test id names; 2.1's has broker control enabled, which
    answers listListeners with this broker's listeners (2.0 has no such endpoint)."""
    assert f"mosquitto version {mosquitto.version}." in broker.log_text()
    assert broker.control_api is mosquitto.has_control_api is (mosquitto.version == "2.1")
    async with asyncio.timeout(STEP_TIMEOUT), _client(broker, broker.port) as client:
        if mosquitto.version == "2.0":
            return
        response = await _broker_control(client, "listListeners")
    ports = sorted(listener["port"] for listener in response["data"]["listeners"])
    assert ports == sorted(broker.ports), response


async def test_admin_role_may_use_all_control_topics(broker: MosquittoBroker) -> None:
    async with asyncio.timeout(STEP_TIMEOUT), _client(broker, broker.port) as client:
        # Granted QoS / reason code below 0x80 means the ACL allowed it.
        granted = await client.subscribe("$CONTROL/broker/v1/response", qos=1)
        assert all(code.value < 0x80 for code in granted), granted  # type: ignore[union-attr]


async def test_tls_and_mutual_tls(broker: MosquittoBroker, tls_material: TlsMaterial) -> None:
    assert broker.tls_port is not None
    assert broker.mtls_port is not None
    assert broker.tls_files is not None
    ca_only = client_ssl_context(tls_material.ca_cert)
    async with asyncio.timeout(STEP_TIMEOUT):
        async with _client(broker, broker.tls_port, ca_only) as client:
            await _assert_admin_works(client, broker)
        mutual = client_ssl_context(
            tls_material.ca_cert,
            cert_chain=(broker.tls_files["client_cert"], broker.tls_files["client_key"]),
        )
        async with _client(broker, broker.mtls_port, mutual) as client:
            await _assert_admin_works(client, broker)
        # Without a client certificate the mutual-TLS listener refuses us.  With
        # TLS 1.3 the client handshake completes first and the alert arrives on
        # the first read (aiomqtt would only notice via its connect timeout).
        reader, writer = await asyncio.open_connection(broker.host, broker.mtls_port, ssl=ca_only)
        with pytest.raises(ssl.SSLError, match="certificate required"):
            await reader.read()
        writer.close()
        with contextlib.suppress(ssl.SSLError):
            await writer.wait_closed()


@pytest.mark.parametrize(
    ("port_attr", "trust_other_ca", "reason"),
    [
        ("selfsigned_port", False, "self-signed certificate"),
        ("expired_port", False, "certificate has expired"),
        ("wrongname_port", False, "IP address mismatch"),
        ("tls_port", True, "self-signed certificate in certificate chain"),
    ],
)
async def test_bad_tls_is_rejected(
    broker: MosquittoBroker,
    tls_material: TlsMaterial,
    port_attr: str,
    trust_other_ca: bool,
    reason: str,
) -> None:
    # A plain stdlib handshake: paho-mqtt 2.2 leaks the socket (ResourceWarning)
    # when its own TLS handshake fails, which -W error turns into a failure.
    port = getattr(broker, port_attr)
    assert isinstance(port, int)
    ca = tls_material.other_ca_cert if trust_other_ca else tls_material.ca_cert
    async with asyncio.timeout(STEP_TIMEOUT):
        with pytest.raises(ssl.SSLCertVerificationError, match=reason):
            await asyncio.open_connection(broker.host, port, ssl=client_ssl_context(ca))


async def test_kill_and_restart_on_same_ports(broker: MosquittoBroker) -> None:
    ports = list(broker.ports)
    pid = broker.pid
    async with asyncio.timeout(STEP_TIMEOUT), _client(broker, broker.port) as client:
        await _assert_admin_works(client, broker)
    broker.kill()
    assert not broker.is_running
    broker.restart()
    new_pid = broker.pid
    assert new_pid is not None
    assert new_pid != pid
    assert broker.ports == ports
    async with asyncio.timeout(STEP_TIMEOUT), _client(broker, broker.port) as client:
        await _assert_admin_works(client, broker)
    broker.stop()
    assert not broker.is_running
    assert "mosquitto version" in broker.log_text()
