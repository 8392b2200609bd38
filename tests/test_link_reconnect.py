"""A link recovers like the Cedalo MMC's: while an outage is young (reconnect_fast_period)
the wait between attempts stays at or under reconnect_fast_max_delay, so a broker that
comes back within a minute has mmc connected again within a second; after that the
backoff doubles up to reconnect_max_delay, jittered."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import pytest

from mmc.appkeys import connections_key
from mmc.brokers.link import BrokerLink, LinkConfig, LinkOptions, ReconnectBackoff
from mmc.config import Settings
from testbed.mosquitto import HOST, MosquittoBroker
from tests.conftest import MakeClient, wait_until

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")


class AttemptClock:
    """A link observer that notes when each failed attempt ended."""

    def __init__(self) -> None:
        self.failures: list[float] = []

    def observe_link(self, connected: bool) -> None:
        pass

    def observe_reconnect(self) -> None:
        self.failures.append(time.monotonic())

    def observe_control(self, api: str, command: str, outcome: str, seconds: float) -> None:
        pass

    def observe_message(self, api: str, commands: int) -> None:
        pass


def _link(broker: MosquittoBroker, options: LinkOptions, observer: AttemptClock) -> BrokerLink:
    record = LinkConfig(
        id="restarted",
        url=f"mqtt://{HOST}:{broker.port}",
        username=broker.admin_username,
        password=broker.admin_password,
    )
    return BrokerLink(record, None, options, observer)


async def _accepting(port: int) -> float:
    """When the port first accepts a TCP connection (polled every 5 ms)."""
    while True:
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.005)
            continue
        accepted = time.monotonic()
        writer.close()
        await writer.wait_closed()
        return accepted


async def test_back_within_a_second_of_a_broker_restarted_after_eight_seconds(
    own_broker: MosquittoBroker,
) -> None:
    # The shipped defaults: the point is what an operator gets without tuning.
    clock = AttemptClock()
    link = _link(own_broker, LinkOptions(), clock)
    link.start()
    try:
        assert await link.wait_connected(5)
        own_broker.kill()
        dropped = time.monotonic()
        await wait_until(lambda: not link.connected, timeout=5)
        # Eight seconds of refusals: exponential backoff alone would be sleeping 4-8 s by
        # now. Restart right after an attempt failed, so the next one is a whole wait away.
        await asyncio.sleep(8 - (time.monotonic() - dropped))
        seen = len(clock.failures)
        await wait_until(lambda: len(clock.failures) > seen, timeout=10)
        starting = asyncio.create_task(asyncio.to_thread(own_broker.start))
        accepted = await _accepting(own_broker.port)
        await wait_until(lambda: link.connected, timeout=5, interval=0.005)
        back = time.monotonic() - accepted
        await starting
        assert back < 1.0, f"connected {back:.2f} s after the broker accepted connections"
        # A refused connect costs next to nothing, but the attempts stayed spaced out.
        gaps = [b - a for a, b in itertools.pairwise(clock.failures)]
        assert gaps
        assert min(gaps) >= 0.2, gaps
        assert max(gaps) <= 0.75, gaps
    finally:
        await link.stop()


async def test_after_the_fast_period_the_wait_doubles_up_to_the_maximum(
    own_broker: MosquittoBroker,
) -> None:
    options = LinkOptions(
        reconnect_min_delay=0.05,
        reconnect_fast_period=1.0,
        reconnect_fast_max_delay=0.1,
        reconnect_max_delay=0.8,
    )
    clock = AttemptClock()
    link = _link(own_broker, options, clock)
    link.start()
    try:
        assert await link.wait_connected(5)
        own_broker.kill()
        dropped = time.monotonic()
        await wait_until(lambda: len(clock.failures) >= 1, timeout=5)
        # Fast period: 0.05-0.1 s apart (ceilings 0.05, 0.1, 0.1, ...); then ceilings 0.2,
        # 0.4, 0.8, 0.8, ... (waits of half to all of them).
        await asyncio.sleep(4.5 - (time.monotonic() - dropped))
        times = list(clock.failures)
    finally:
        await link.stop()
    # The outage is timed from the first failure (the drop), noted here microseconds
    # before the link computes its wait.
    gaps = [(a - times[0], b - a) for a, b in itertools.pairwise(times)]
    young = [gap for began, gap in gaps if began < 0.999]
    old = [gap for began, gap in gaps if began > 1.001]
    # A gap is the wait plus the refused attempt, which takes a millisecond on a quiet
    # machine and, seen under parallel test workers, up to 0.15 s more: the median holds
    # the wait's bound, single gaps get that much slack (still well under the 0.4-0.8 s
    # waits that follow the fast period).
    slack = 0.2
    assert len(young) >= 9, gaps
    assert statistics.median(young) < 0.1 + 0.02, gaps
    assert max(young) < 0.1 + slack, gaps
    assert len(old) >= 4, gaps
    # Once the fast period was over the wait grew again from the fast cap (not straight
    # to the maximum: the first is 0.1-0.2 s, or 0.2-0.4 s if the one that began right at
    # the end of the period was counted as young), and stopped at the maximum.
    assert old[0] < 0.4 + slack, gaps
    assert max(old) >= 0.4, gaps
    assert max(old) <= 0.8 + slack, gaps


def test_the_backoff_is_held_low_while_the_outage_is_young() -> None:
    backoff = ReconnectBackoff(LinkOptions())  # 0.5 s, 60 s fast period, 30 s maximum
    ceilings = [backoff.next_delay(t, 1.0) for t in (100.0, 101.0, 130.0, 159.9)]
    assert ceilings == [0.5, 0.5, 0.5, 0.5]
    # Then it doubles, up to the maximum.
    later = [backoff.next_delay(160.0 + n, 1.0) for n in range(8)]
    assert later == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    # Jitter: between half and all of the ceiling.
    assert backoff.next_delay(200.0, 0.0) == 15.0
    # Connected again: the next outage starts young.
    backoff.reset()
    assert backoff.next_delay(500.0, 0.0) == 0.25
    assert backoff.next_delay(559.0, 1.0) == 0.5


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # No fast period: plain exponential backoff from the minimum.
        (LinkOptions(reconnect_fast_period=0), [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]),
        # A minimum below the fast cap: doubling up to the cap while young.
        (
            LinkOptions(reconnect_min_delay=0.1, reconnect_fast_max_delay=0.5),
            [0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5],
        ),
        # The fast cap never takes the wait below the minimum...
        (
            LinkOptions(reconnect_min_delay=2.0, reconnect_fast_max_delay=0.5),
            [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
        ),
        # ...nor above the maximum.
        (
            LinkOptions(reconnect_fast_max_delay=5.0, reconnect_max_delay=3.0),
            [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0],
        ),
    ],
)
def test_the_fast_cap_within_the_other_bounds(options: LinkOptions, expected: list[float]) -> None:
    backoff = ReconnectBackoff(options)
    assert [backoff.next_delay(float(n), 1.0) for n in range(7)] == expected


def test_the_outage_is_timed_from_its_first_failure() -> None:
    options = LinkOptions(reconnect_fast_period=10.0, reconnect_max_delay=30.0)
    backoff = ReconnectBackoff(options)
    backoff.next_delay(1000.0, 1.0)
    assert backoff.next_delay(1009.0, 1.0) == 0.5
    assert backoff.next_delay(1010.0, 1.0) == 1.0


async def test_the_settings_reach_the_links(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(
        settings.replace(reconnect_fast_period=12.5, reconnect_fast_max_delay=0.2)
    )
    options = client.app[connections_key].pool.options
    assert (options.reconnect_fast_period, options.reconnect_fast_max_delay) == (12.5, 0.2)
