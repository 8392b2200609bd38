"""Links to the same broker share one capability detection, but never one that started
before they connected, and never a failed one."""

from __future__ import annotations

import asyncio

import pytest

from mmc.brokers.capabilities import Capabilities, SharedDetection
from mmc.errors import BrokerUnavailable

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

DYNSEC = Capabilities(frozenset({"dynamicSecurity"}))


async def test_links_that_connected_before_a_detection_started_share_it() -> None:
    shared = SharedDetection()
    loop = asyncio.get_running_loop()
    connected = loop.time()
    runs = 0
    release = asyncio.Event()

    async def probe() -> Capabilities:
        nonlocal runs
        runs += 1
        await release.wait()
        return DYNSEC

    first = asyncio.ensure_future(shared.detect("b", connected, probe))
    await asyncio.sleep(0)
    others = [asyncio.ensure_future(shared.detect("b", connected, probe)) for _ in range(5)]
    elsewhere = asyncio.ensure_future(shared.detect("other broker", connected, probe))
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(first, *others, elsewhere) == [DYNSEC] * 7
    assert runs == 2


async def test_a_detection_older_than_the_connection_is_not_trusted() -> None:
    shared = SharedDetection()
    loop = asyncio.get_running_loop()
    runs = 0
    release = asyncio.Event()

    async def probe() -> Capabilities:
        nonlocal runs
        runs += 1
        await release.wait()
        return DYNSEC

    old = asyncio.ensure_future(shared.detect("b", loop.time(), probe))
    await asyncio.sleep(0.01)
    # Connected after that detection started (maybe to the broker after a restart).
    new = asyncio.ensure_future(shared.detect("b", loop.time(), probe))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(old, new)
    assert runs == 2


async def test_a_failed_shared_detection_makes_the_others_probe_themselves() -> None:
    shared = SharedDetection()
    connected = asyncio.get_running_loop().time()
    failing = asyncio.Event()

    async def leader() -> Capabilities:
        await failing.wait()
        raise BrokerUnavailable("the leader's link dropped")

    async def own() -> Capabilities:
        return DYNSEC

    first = asyncio.ensure_future(shared.detect("b", connected, leader))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(shared.detect("b", connected, own))
    await asyncio.sleep(0)
    failing.set()
    with pytest.raises(BrokerUnavailable):
        await first
    assert await follower == DYNSEC
