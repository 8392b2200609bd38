"""Prometheus metrics, one registry per application (no globals: tests run many apps).

Label values are bounded: route templates (not raw paths), known command names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mmc.brokers.pool import BrokerPool

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _PoolCollector(Collector):
    """Link states are read from the pool at scrape time, so they can never drift."""

    def __init__(self) -> None:
        self.pool: BrokerPool | None = None

    def collect(self) -> Iterator[Metric]:
        links = GaugeMetricFamily("mmc_broker_links", "Broker links by state", labels=["state"])
        up = down = 0
        for link in self.pool or ():
            if link.connected:
                up += 1
            else:
                down += 1
        links.add_metric(["up"], up)
        links.add_metric(["down"], down)
        yield links


class _LoopCollector(Collector):
    """Tasks alive on the event loop at scrape time: a leak shows as steady growth."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily("mmc_asyncio_tasks", "asyncio tasks not yet done")
        tasks.add_metric([], len(asyncio.all_tasks(self.loop)) if self.loop is not None else 0)
        yield tasks


class _StoreCollector(Collector):
    """Whether this replica hears the others' changes (always 1 on SQLite): alert on 0."""

    def __init__(self) -> None:
        self.listening: Callable[[], bool] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.listening is not None:
            gauge = GaugeMetricFamily(
                "mmc_store_listening", "1 while the store's change feed is up"
            )
            gauge.add_metric([], 1 if self.listening() else 0)
            yield gauge


class _ConnectionsCollector(Collector):
    """Open HTTP connections at scrape time (`mmc serve` only: its server counts them)."""

    def __init__(self) -> None:
        self.count: Callable[[], int] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.count is not None:
            gauge = GaugeMetricFamily("mmc_http_connections_open", "Open HTTP connections")
            gauge.add_metric([], self.count())
            yield gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "mmc_http_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "mmc_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.link_changes = Counter(
            "mmc_broker_link_changes", "Broker link state changes", ["state"], registry=r
        )
        self.reconnects = Counter(
            "mmc_broker_reconnect_attempts", "Broker reconnection attempts", registry=r
        )
        self.control_requests = Counter(
            "mmc_control_requests", "$CONTROL requests", ["api", "command", "outcome"], registry=r
        )
        # Messages, not commands: what batching saves shows as requests / messages.
        self.control_messages = Counter(
            "mmc_control_messages", "$CONTROL request messages published", ["api"], registry=r
        )
        self.control_latency = Histogram(
            "mmc_control_request_duration_seconds",
            "$CONTROL request latency",
            ["api", "command"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "mmc_event_loop_lag_seconds",
            "How late the event loop runs a timer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.audit_failures = Counter(
            "mmc_audit_write_failures",
            "Audit entries that could not be stored (logged instead)",
            registry=r,
        )
        # Links opened, reopened or closed because another replica changed a connection,
        # by what told us: a healthy feed shows trigger="notify" only.
        self.connections_followed = Counter(
            "mmc_connections_followed",
            "Links changed to follow the shared store",
            ["trigger", "action"],
            registry=r,
        )
        # Connections turned away at http_max_connections(_per_address), by cap; and
        # accept() failing for want of file descriptors or memory (EMFILE...).
        self.http_connections_refused = Counter(
            "mmc_http_connections_refused",
            "HTTP connections refused at a connection cap",
            ["cap"],
            registry=r,
        )
        self.http_accept_errors = Counter(
            "mmc_http_accept_errors",
            "accept() failures for want of file descriptors or memory",
            registry=r,
        )
        self._connections = _ConnectionsCollector()
        r.register(self._connections)
        self._pool = _PoolCollector()
        r.register(self._pool)
        self._store = _StoreCollector()
        r.register(self._store)
        # Children by label values (bounded: route templates, methods, statuses, commands):
        # labels() validates and locks on every call, and these run on every request.
        self._http: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._control: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._loop = _LoopCollector()
        r.register(self._loop)
        # process_resident_memory_bytes, process_open_fds, ... for this process.
        ProcessCollector(registry=r)

    def watch_pool(self, pool: BrokerPool) -> None:
        self._pool.pool = pool

    def watch_connections(self, count: Callable[[], int]) -> None:
        self._connections.count = count

    def watch_store(self, listening: Callable[[], bool]) -> None:
        self._store.listening = listening

    def observe_follow(self, trigger: str, action: str) -> None:
        self.connections_followed.labels(trigger, action).inc()

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route, method),
            )
            self._http[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop.loop = loop

    def observe_control(self, api: str, command: str, outcome: str, seconds: float) -> None:
        key = (api, command, outcome)
        children = self._control.get(key)
        if children is None:
            children = (
                self.control_requests.labels(api, command, outcome),
                self.control_latency.labels(api, command),
            )
            self._control[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_message(self, api: str, commands: int) -> None:
        self.control_messages.labels(api).inc()

    def observe_link(self, connected: bool) -> None:
        self.link_changes.labels("up" if connected else "down").inc()

    def observe_reconnect(self) -> None:
        self.reconnects.inc()

    async def measure_loop_lag(self, interval: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - expected))
