"""Link status and the mapping of connection failures to the codes the MMC shows.

The MMC runs on Node.js, so its users know Node's names: ``ECONNREFUSED`` with
``errno``/``syscall``/``address``/``port`` for socket errors, OpenSSL's verify
error names for certificates, and the CONNACK reason in upper snake case.
"""

from __future__ import annotations

import errno as errno_mod
import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from mmc.brokers.transport import (
    ConnectionLost,
    HandshakeTimeout,
    MqttConnectError,
    ReasonCode,
    SubscribeLost,
    SubscribeTimeout,
)


@dataclass(frozen=True)
class LinkError:
    code: str
    message: str
    errno: int | None = None
    syscall: str | None = None
    address: str | None = None
    port: int | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code}
        if self.errno is not None:
            out["errno"] = self.errno
        if self.syscall is not None:
            out["syscall"] = self.syscall
        if self.address is not None:
            out["address"] = self.address
        if self.port is not None:
            out["port"] = self.port
        out["message"] = self.message
        return out


@dataclass(frozen=True)
class LinkStatus:
    connected: bool
    timestamp: int
    error: LinkError | None = field(default=None)
    # ms when the last established connection dropped; kept through the reconnect
    # errors that follow (they replace ``error`` and ``timestamp``) until connected again.
    dropped_at: int | None = None
    # A user disconnected the connection: the link is kept but not run.
    disconnected: bool = False

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"connected": self.connected, "timestamp": self.timestamp}
        if self.error is not None:
            out["error"] = self.error.to_wire()
        if self.dropped_at is not None:
            out["droppedAt"] = self.dropped_at
        if self.disconnected:
            out["disconnected"] = True
        return out


# Not a failure: a user disconnected the connection and it stays so until reconnected.
DISCONNECTED = LinkError(
    code="EDISCONNECTED", message="Disconnected by a user (PUT .../connect reconnects it)"
)


# OpenSSL X509_V_ERR_* numbers -> the names Node.js (and so the MMC) reports.
_VERIFY_CODES: dict[int, str] = {
    2: "UNABLE_TO_GET_ISSUER_CERT",
    7: "CERT_SIGNATURE_FAILURE",
    9: "CERT_NOT_YET_VALID",
    10: "CERT_HAS_EXPIRED",
    13: "ERROR_IN_CERT_NOT_BEFORE_FIELD",
    14: "ERROR_IN_CERT_NOT_AFTER_FIELD",
    18: "DEPTH_ZERO_SELF_SIGNED_CERT",
    19: "SELF_SIGNED_CERT_IN_CHAIN",
    20: "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    21: "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
    23: "CERT_REVOKED",
    24: "INVALID_CA",
    26: "INVALID_PURPOSE",
    27: "CERT_UNTRUSTED",
    28: "CERT_REJECTED",
    # Hostname / IP address mismatch: Node reports both as ERR_TLS_CERT_ALTNAME_INVALID.
    62: "ERR_TLS_CERT_ALTNAME_INVALID",
    64: "ERR_TLS_CERT_ALTNAME_INVALID",
}

# getaddrinfo failures (negative EAI_* numbers) -> Node's code.
_GAI_CODES: dict[int, str] = {
    socket.EAI_NONAME: "ENOTFOUND",
    socket.EAI_AGAIN: "EAI_AGAIN",
    socket.EAI_FAIL: "ENOTFOUND",
    getattr(socket, "EAI_NODATA", -5): "ENOTFOUND",
}


def _underlying_os_error(exc: BaseException) -> OSError | None:
    """aiomqtt re-raises socket and TLS errors as ``MqttError(str(exc)) from None``; the
    original stays reachable through ``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _reason_code_name(rc: object) -> str:
    name = rc.getName() if isinstance(rc, ReasonCode) else str(rc)
    return "_".join(name.upper().replace("-", " ").split())


def describe_error(exc: BaseException, host: str, port: int) -> LinkError:
    """Turn whatever a connection attempt raised into a LinkError."""
    if isinstance(exc, HandshakeTimeout):
        # The socket is connected: no syscall failed, the broker just never answered.
        return LinkError(
            code="ECONNACKTIMEOUT",
            address=host,
            port=port,
            message=f"Connected to {host}:{port}, but the broker sent no MQTT CONNACK "
            f"within {exc.timeout:g} s",
        )
    if isinstance(exc, SubscribeTimeout):
        # CONNACK came: the link is connected, but not yet listening for replies.
        return LinkError(
            code="ESUBACKTIMEOUT",
            address=host,
            port=port,
            message=f"Connected to {host}:{port}, but the broker did not answer SUBSCRIBE "
            f"within {exc.timeout:g} s",
        )
    if isinstance(exc, SubscribeLost):
        # Connected, then closed: the MMC's "closed" (no droppedAt: it was never in use).
        cause = exc.__cause__
        return LinkError(
            code="ECONNCLOSED",
            errno=1,
            syscall="on",
            address=host,
            port=port,
            message=f"Connection to {host}:{port} closed before the broker answered SUBSCRIBE"
            + (f" ({cause})" if cause is not None and str(cause) else ""),
        )
    if isinstance(exc, MqttConnectError):
        code = _reason_code_name(exc.rc)
        # MQTT 3.1.1 numbers its CONNACK refusals; v5 reason codes carry names.
        v311 = {4: "BAD_USERNAME_OR_PASSWORD", 5: "NOT_AUTHORIZED"}
        if isinstance(exc.rc, int) and exc.rc in v311:
            code = v311[exc.rc]
        return LinkError(code=code, message=f"Connection refused by broker: {_human(code)}")

    if isinstance(exc, ConnectionLost):
        detail = exc.detail or ""
        ssl_reason = re.search(r"\[SSL: ([A-Z0-9_]+)\]", detail)
        if ssl_reason:
            return LinkError(code=f"ERR_SSL_{ssl_reason.group(1)}", message=detail)
        return LinkError(
            code="ECONNRESET",
            syscall="read",
            address=host,
            port=port,
            message=f"Connection closed by {host}:{port} before CONNACK"
            + (f" ({detail})" if detail else ""),
        )

    cause = _underlying_os_error(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        code = _VERIFY_CODES.get(cause.verify_code, "CERT_VERIFICATION_FAILED")
        return LinkError(code=code, message=cause.verify_message or str(cause))
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return LinkError(code=f"ERR_SSL_{cause.reason.upper()}", message=str(cause))
    if isinstance(cause, socket.gaierror):
        code = _GAI_CODES.get(cause.errno or 0, "ENOTFOUND")
        return LinkError(
            code=code,
            errno=cause.errno,
            syscall="getaddrinfo",
            address=host,
            message=f"getaddrinfo {code} {host}",
        )
    # TimeoutError is an OSError without errno: test it before the errno branch.
    if isinstance(cause, TimeoutError):
        return LinkError(
            code="ETIMEDOUT",
            errno=-errno_mod.ETIMEDOUT,
            syscall="connect",
            address=host,
            port=port,
            message=f"connect ETIMEDOUT {host}:{port}",
        )
    if isinstance(cause, OSError) and cause.errno:
        code = errno_mod.errorcode.get(cause.errno, "EIO")
        # Node reports libuv's negative errno values.
        return LinkError(
            code=code,
            errno=-cause.errno,
            syscall="connect",
            address=host,
            port=port,
            message=f"connect {code} {host}:{port}",
        )
    text = str(exc) or type(exc).__name__
    if "timed out" in text.lower():
        return LinkError(
            code="ETIMEDOUT", message=f"No answer from broker at {host}:{port} ({text})"
        )
    return LinkError(code="ECONNCLOSED", message=text)


def _human(code: str) -> str:
    return code.replace("_", " ").capitalize()


def describe_drop(exc: BaseException, host: str, port: int) -> LinkError:
    """An established connection that ended: the MMC's ``ECONNCLOSED`` (``errno`` 1,
    ``syscall`` "on"), and why where paho or the socket told (when: ``droppedAt``)."""
    cause = exc.__cause__ or exc.__context__
    reason = str(cause) if cause is not None and str(cause) else str(exc)
    return LinkError(
        code="ECONNCLOSED",
        errno=1,
        syscall="on",
        address=host,
        port=port,
        message=f"Connection to {host}:{port} closed" + (f" ({reason})" if reason else ""),
    )
