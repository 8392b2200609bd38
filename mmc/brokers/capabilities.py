"""What a broker offers, learned on every (re)connect.

Brokers differ: open-source 2.0 silently drops a ``$CONTROL`` publish no plugin
handles, 2.1 answers ``{"error": "endpoint not available"}`` and has
``$CONTROL/broker/v1`` ``listPlugins`` when ``enable_control_api`` is on, Pro has
more plugins. Detection sends ``listPlugins`` and one harmless probe per API at
once, each bounded by the short probe timeout (not the request timeout): any
answer, even an error, means the endpoint is there; silence means it is not (or
this connection's user may not publish to it, which is the same for us).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mmc.brokers.control import ControlChannel, lost_answers_raised
from mmc.errors import BrokerTimeout, BrokerUnavailable, ControlNotFound, MmcError, ReplyLost

# Feature name -> its $CONTROL API (request topic $CONTROL/<api>/v1).
FEATURE_APIS: dict[str, str] = {
    "dynamicSecurity": "dynamic-security",
    "brokerControl": "broker",
    "clientControl": "cedalo/client-control",
    "inspect": "cedalo/inspect",
    "license": "cedalo/license",
    "certificateManagement": "certificate-management",
    "streamProcessing": "stream-processing",
    "highAvailability": "cedalo/ha",
}
API_FEATURES: dict[str, str] = {api: feature for feature, api in FEATURE_APIS.items()}
# Set when the broker announces at least one bridge plugin.
BRIDGES = "bridges"

# How errors name a feature: "<label> plugin not enabled on this broker".
FEATURE_LABELS: dict[str, str] = {
    "dynamicSecurity": "dynamic-security",
    "brokerControl": "broker-control",
    "clientControl": "client-control",
    "inspect": "inspect",
    "license": "license",
    "certificateManagement": "certificate-management",
    "streamProcessing": "stream-processing",
    "highAvailability": "high-availability",
    BRIDGES: "bridge",
}

# The probes for APIs a broker may have without announcing them in listPlugins
# (2.0 has no listPlugins at all). Each is read-only or a no-op.
PROBES: dict[str, dict[str, Any]] = {
    "dynamicSecurity": {"command": "getDefaultACLAccess"},
    "license": {"command": "getLicenseInformation"},
    "inspect": {"command": "listClients", "verbose": False, "count": 1, "offset": 0},
    "clientControl": {
        "command": "unsubscribeClient",
        "clientid": "mmc-capability-probe",
        "topic": "mmc/capability-probe",
    },
}
LIST_PLUGINS: dict[str, Any] = {"command": "listPlugins"}

_BRIDGE_API = re.compile(r"^cedalo/[A-Za-z0-9_.-]+-bridge$")
_ENDPOINT = re.compile(r"^\$CONTROL/(?P<api>.+)/v\d+$")


@dataclass(frozen=True)
class Capabilities:
    features: frozenset[str]
    # Bridge plugin APIs, e.g. "cedalo/influxdb-bridge".
    bridge_apis: tuple[str, ...] = ()
    # listPlugins' entries, as the broker sent them (empty without broker control).
    plugins: tuple[Mapping[str, Any], ...] = field(default=())
    # Features whose probe met silence: absent on 2.0, or a broker too busy to answer
    # within the probe time (the link asks again later: BrokerLink.require_feature).
    unanswered: frozenset[str] = frozenset()


def label(feature: str) -> str:
    return FEATURE_LABELS.get(feature, feature)


def from_plugins(plugins: Iterable[Any]) -> tuple[set[str], list[str]]:
    """Features and bridge APIs named by ``listPlugins``' ``control-endpoints``."""
    features: set[str] = set()
    bridges: list[str] = []
    for plugin in plugins:
        if not isinstance(plugin, Mapping):
            continue
        endpoints = plugin.get("control-endpoints") or plugin.get("controlEndpoints") or []
        for endpoint in endpoints if isinstance(endpoints, list) else []:
            match = _ENDPOINT.match(str(endpoint))
            if match is None:
                continue
            api = match.group("api")
            if api in API_FEATURES:
                features.add(API_FEATURES[api])
            elif _BRIDGE_API.match(api) and api not in bridges:
                bridges.append(api)
    if bridges:
        features.add(BRIDGES)
    return features, bridges


class _Unavailable:
    """The link dropped during detection: the result would be meaningless."""


class _Silent:
    """No answer within the probe time."""


async def _answer(
    control: ControlChannel, api: str, command: Mapping[str, Any], timeout: float
) -> dict[str, Any] | _Unavailable | _Silent | None:
    try:
        # A probe unanswered is the answer (no such API); nothing to resolve.
        with lost_answers_raised():
            return await control.send(api, command, timeout=timeout)
    except ReplyLost as lost:
        return _Silent() if lost.timed_out else _Unavailable()
    except BrokerTimeout:
        return _Silent()
    except ControlNotFound:
        return None  # 2.1: "endpoint not available", said at once
    except BrokerUnavailable:
        return _Unavailable()


async def detect(control: ControlChannel, timeout: float) -> Capabilities:
    """Ask everything at once; takes at most ``timeout`` (plus scheduling).

    Raises BrokerUnavailable if the link drops meanwhile.
    """
    names = list(PROBES)
    listing, *answers = await asyncio.gather(
        _answer(control, FEATURE_APIS["brokerControl"], LIST_PLUGINS, timeout),
        *(_answer(control, FEATURE_APIS[name], PROBES[name], timeout) for name in names),
    )
    if any(isinstance(a, _Unavailable) for a in (listing, *answers)):
        raise BrokerUnavailable(f"Broker {control.broker_id} disconnected during detection")
    features = {
        name
        for name, answer in zip(names, answers, strict=True)
        if answer is not None and not isinstance(answer, _Silent)
    }
    silent = {
        name for name, answer in zip(names, answers, strict=True) if isinstance(answer, _Silent)
    }
    plugins: list[Mapping[str, Any]] = []
    bridges: list[str] = []
    if isinstance(listing, dict):
        features.add("brokerControl")
        data = listing.get("data")
        found = data.get("plugins") if isinstance(data, dict) else None
        if isinstance(found, list):
            plugins = [p for p in found if isinstance(p, Mapping)]
            announced, bridges = from_plugins(plugins)
            features |= announced
    return Capabilities(
        frozenset(features), tuple(bridges), tuple(plugins), frozenset(silent - features)
    )


class SharedDetection:
    """Links that reach the same broker as the same user share one detection.

    mosquitto 2.0 sends every ``$CONTROL`` reply to every client subscribed to the
    response topic: N links to one broker detecting at once (all of them, after that
    broker restarts) would cost N² messages. A link that connected before a detection for
    its broker started waits for that one instead of probing itself; a detection that
    started before the link connected (perhaps to the broker before a restart) is not
    trusted, nor a shared one that failed (the link then probes itself).
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, tuple[float, asyncio.Task[Capabilities]]] = {}

    async def detect(
        self, key: Hashable, connected_at: float, run: Callable[[], Awaitable[Capabilities]]
    ) -> Capabilities:
        running = self._running.get(key)
        if running is not None and running[0] >= connected_at and not running[1].done():
            try:
                return await asyncio.shield(running[1])
            except MmcError:
                pass
        loop = asyncio.get_running_loop()
        task = loop.create_task(_wrap(run))
        self._running[key] = (loop.time(), task)
        task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: Hashable, task: asyncio.Task[Capabilities]) -> None:
        running = self._running.get(key)
        if running is not None and running[1] is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: whoever awaited it has reported it


async def _wrap(run: Callable[[], Awaitable[Capabilities]]) -> Capabilities:
    return await run()
