"""What the MMC web UI's shell needs of mmc besides its WebSocket: the broker each
browser session has selected, and the ``$SYS`` status in the UI's shape.

The UI's commands carry no broker: ``connectToBroker {brokerName}`` on its WebSocket
selects one for the session. Its HTTP calls (``GET /api/client-control/ping``) carry
none either, so the WebSocket handler records the selection here (``select``) and the
HTTP side reads it (``selected``). Sessions are known by the digest of their id, never
the id itself; the most recent ``MAX_SESSIONS`` are kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from mmc.auth.identity import digest
from mmc.brokers.link import BrokerLink
from mmc.brokers.sys_tree import fold

MAX_SESSIONS = 10_000


class UiSelections:
    """Session -> the connection id its UI selected last."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self._limit = limit
        self._selected: OrderedDict[str, str] = OrderedDict()

    def select(self, session_id: str, connection_id: str) -> None:
        key = digest(session_id)
        self._selected[key] = connection_id
        self._selected.move_to_end(key)
        while len(self._selected) > self._limit:
            self._selected.popitem(last=False)

    def selected(self, session_id: str) -> str | None:
        return self._selected.get(digest(session_id))

    def forget(self, session_id: str) -> None:
        self._selected.pop(digest(session_id), None)


def find(links: Iterable[BrokerLink], wanted: str) -> BrokerLink | None:
    """The link of a connection named by id, else by name (the UI knows names)."""
    candidates = list(links)
    for link in candidates:
        if link.id == wanted:
            return link
    for link in candidates:
        if link.record.name == wanted:
            return link
    return None


def default_selection(links: Iterable[BrokerLink]) -> BrokerLink | None:
    """The connection the UI selects by itself (nothing in its sessionStorage): the first
    connected one, else the last one."""
    last = None
    for link in links:
        if link.connected:
            return link
        last = link
    return last


def system_status(link: BrokerLink) -> dict[str, Any]:
    """The UI's ``system_status`` payload: ``{_name, $SYS: {broker: {...}}}``, the values
    the strings the broker published."""
    return {"_name": link.record.name, **fold(link.sys_values)}
