"""Where a broker URL points: the schemes mmc connects with, their default ports, and the
host, port, TLS and WebSocket path of one URL.

Standard library only: the connection schemas validate URLs with it without loading the
MQTT client that mmc.brokers uses to connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

TLS_SCHEMES = frozenset({"mqtts", "ssl", "tls", "wss"})
DEFAULT_PORTS = {
    "mqtt": 1883,
    "tcp": 1883,
    "mqtts": 8883,
    "ssl": 8883,
    "tls": 8883,
    "ws": 80,
    "wss": 443,
}


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool
    websocket_path: str | None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        websocket = scheme in ("ws", "wss")
        return cls(
            host=parts.hostname or "",
            port=parts.port or DEFAULT_PORTS[scheme],
            tls=scheme in TLS_SCHEMES,
            websocket_path=(parts.path or "/mqtt") if websocket else None,
        )
