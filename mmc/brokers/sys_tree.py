"""The ``$SYS`` tree as the Brokers API shows it, and its in-memory history.

Topics are folded into a nested object by splitting on ``/``, the way the
Management Center builds its system status: ``$SYS/broker/clients/total`` becomes
``{"$SYS": {"broker": {"clients": {"total": "3"}}}}``. Values stay the strings the
broker published; a topic never received is simply absent (mosquitto publishes
most values only when they change, so there is no "0" to invent).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

# A value whose topic is also the prefix of other topics keeps its place under this key.
LEAF_KEY = "_value"
# Log lines (log_dest topic) are a stream, not state: they do not belong in a snapshot.
EXCLUDED_PREFIXES = ("$SYS/broker/log/",)


def fold(values: Mapping[str, str]) -> dict[str, Any]:
    """Nest ``topic -> payload`` by topic level."""
    tree: dict[str, Any] = {}
    for topic in sorted(values):
        if topic.startswith(EXCLUDED_PREFIXES):
            continue
        *parents, leaf = topic.split("/")
        node = tree
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else {LEAF_KEY: child}
                node[part] = child
            node = child
        if isinstance(node.get(leaf), dict):
            node[leaf][LEAF_KEY] = values[topic]
        else:
            node[leaf] = values[topic]
    return tree


def snapshot(values: Mapping[str, str], date: int) -> dict[str, Any]:
    """``{topics, date}`` with ``date`` in milliseconds since the epoch."""
    return {"topics": fold(values), "date": date}


class SysHistory:
    """The last ``length`` snapshots, oldest first; older ones fall off.

    Entries are kept flat (a shallow copy shares every topic and payload string with
    the live values) and folded only when read.
    """

    def __init__(self, length: int) -> None:
        self._entries: deque[tuple[dict[str, str], int]] = deque(maxlen=max(length, 0))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def maxlen(self) -> int:
        return self._entries.maxlen or 0

    def record(self, values: Mapping[str, str], date: int) -> None:
        if self._entries.maxlen:
            self._entries.append((dict(values), date))

    def entries(self) -> list[dict[str, Any]]:
        return [snapshot(values, date) for values, date in self._entries]
