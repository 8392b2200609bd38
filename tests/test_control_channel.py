"""The ControlChannel against a real dynamic-security plugin."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import aiomqtt
import pytest

from mmc.appkeys import connections_key
from mmc.brokers.link import BrokerLink
from mmc.errors import BrokerTimeout, BrokerUnavailable, ControlConflict, ControlNotFound
from testbed.mosquitto import MosquittoBroker
from tests.conftest import Client, plain_body, wait_until

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

DYNSEC = "dynamic-security"


async def _link(client: Client, broker: MosquittoBroker) -> BrokerLink:
    resp = await client.post("/api/connections", json=plain_body(broker))
    assert resp.status == 200, await resp.text()
    return client.app[connections_key].pool.require_connected("plain")


async def test_list_clients_round_trip(client: Client, broker: MosquittoBroker) -> None:
    link = await _link(client, broker)
    response = await link.control.request(DYNSEC, {"command": "listClients"})
    assert response["command"] == "listClients"
    assert broker.admin_username in response["data"]["clients"]


async def test_plugin_errors_are_typed(client: Client, broker: MosquittoBroker) -> None:
    link = await _link(client, broker)
    with pytest.raises(ControlNotFound, match="Client not found"):
        await link.control.request(DYNSEC, {"command": "getClient", "username": "nobody"})
    with pytest.raises(ControlConflict, match="Client already exists"):
        await link.control.request(
            DYNSEC,
            {"command": "createClient", "username": broker.admin_username, "password": "x"},
        )


async def test_concurrent_requests_are_coalesced_and_foreign_replies_ignored(
    client: Client, broker: MosquittoBroker
) -> None:
    link = await _link(client, broker)
    n = 200
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.admin_username,
        password=broker.admin_password,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as observer:
        await observer.subscribe("$CONTROL/dynamic-security/v1/response")
        # Another admin tool's traffic: its replies reach our link too and must be ignored.
        foreign = {"commands": [{"command": "listClients", "correlationData": "not-ours"}]}
        await observer.publish("$CONTROL/dynamic-security/v1", json.dumps(foreign))
        results = await asyncio.gather(
            *(
                link.control.request(
                    DYNSEC, {"command": "getClient", "username": broker.admin_username}
                )
                for _ in range(n)
            )
        )
        assert all(r["data"]["client"]["username"] == broker.admin_username for r in results)

        payloads = await _drain(observer, quiet=0.5)
    messages = len(payloads)
    # Only the traffic of this test: the link's own capability probes, sent when it
    # connected, may be answered on the same topic while we listen.
    replies = sum(
        1
        for p in payloads
        for r in json.loads(p)["responses"]
        if r.get("command") == "getClient" or r.get("correlationData") == "not-ours"
    )
    assert replies == n + 1
    # Many commands per message: far fewer messages than requests.
    assert messages <= n // 10, messages


async def _drain(client: aiomqtt.Client, quiet: float) -> list[bytes]:
    """Every message that arrives until none has come for ``quiet`` seconds."""
    payloads: list[bytes] = []
    messages = aiter(client.messages)
    while True:
        try:
            message = await asyncio.wait_for(anext(messages), quiet)
        except TimeoutError:
            return payloads
        assert isinstance(message.payload, bytes)
        payloads.append(message.payload)


async def test_unanswered_api_times_out(client: Client, broker: MosquittoBroker) -> None:
    link = await _link(client, broker)
    started = time.monotonic()
    command = {"command": "getLicenseInformation"}
    if broker.mosquitto.version == "2.0":
        # mosquitto 2.0 silently drops a $CONTROL publish no plugin handles.
        with pytest.raises(BrokerTimeout, match="did not answer"):
            await link.control.request("cedalo/license", command, timeout=0.5)
        assert 0.4 < time.monotonic() - started < 2.0
    else:
        # 2.1 answers the sender at once: {"error": "endpoint not available"}.
        with pytest.raises(ControlNotFound, match=r"\(endpoint not available\)"):
            await link.control.request("cedalo/license", command, timeout=5)
        assert time.monotonic() - started < 0.5


async def test_link_drop_fails_pending_requests_within_the_request_timeout(
    client: Client, own_broker: MosquittoBroker
) -> None:
    link = await _link(client, own_broker)
    assert own_broker.pid is not None
    # A broker that hangs (SIGSTOP) leaves the request unanswered, then dies.
    os.kill(own_broker.pid, signal.SIGSTOP)
    pending = asyncio.ensure_future(
        link.control.request(DYNSEC, {"command": "listClients"}, timeout=30)
    )
    await asyncio.sleep(0.1)
    assert not pending.done()
    started = time.monotonic()
    own_broker.kill()
    # A read whose answer the drop took waits for the link to be back (up to the request
    # timeout, not the 30 s of the request) to be asked again (tests/test_lost_answers.py).
    with pytest.raises(BrokerUnavailable, match="not back within"):
        await pending
    assert time.monotonic() - started < link.control.timeout + 1

    await wait_until(lambda: not link.connected)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        await link.control.request(DYNSEC, {"command": "listClients"})
    assert time.monotonic() - started < 0.1
