"""Base64 CA/cert/key as the API receives them -> validated material -> ssl.SSLContext.

Everything here is CPU work or file I/O: call it through an executor, never on the loop.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from mmc.errors import InvalidInput


@dataclass(frozen=True)
class CertInfo:
    subject: str
    not_after: str
    fingerprint_sha256: str

    def to_wire(self) -> dict[str, str]:
        return {
            "subject": self.subject,
            "notAfter": self.not_after,
            "fingerprintSha256": self.fingerprint_sha256,
        }


@dataclass(frozen=True)
class TlsMaterial:
    """Validated material, PEM-encoded, ready for an SSLContext."""

    ca_pem: str | None
    cert_pem: str | None
    key_pem: str | None
    reject_unauthorized: bool


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", info={field: {"data": [message]}})


def decode_base64(field: str, data: str) -> bytes:
    compact = "".join(data.split())
    if not compact:
        raise _invalid(field, "is empty")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(field, "is not valid base64") from None


def parse_certificates(field: str, raw: bytes) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in raw:
            certs = x509.load_pem_x509_certificates(raw)
        else:
            certs = [x509.load_der_x509_certificate(raw)]
    except ValueError:
        raise _invalid(field, "is not a PEM or DER X.509 certificate") from None
    if not certs:
        raise _invalid(field, "holds no certificate")
    return certs


def parse_private_key(field: str, raw: bytes) -> PrivateKeyTypes:
    try:
        if b"-----BEGIN" in raw:
            return serialization.load_pem_private_key(raw, password=None)
        return serialization.load_der_private_key(raw, password=None)
    except TypeError:
        raise _invalid(
            field, "is encrypted with a passphrase; supply the key unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise _invalid(field, "is not a PEM or DER private key") from None


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _info(cert: x509.Certificate) -> CertInfo:
    fingerprint = cert.fingerprint(hashes.SHA256()).hex().upper()
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        fingerprint_sha256=":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)),
    )


@functools.lru_cache(maxsize=4096)
def certificate_info(data: str) -> CertInfo | None:
    """Subject, expiry and fingerprint of the first certificate in stored base64 data."""
    try:
        return _info(parse_certificates("certificate", decode_base64("certificate", data))[0])
    except InvalidInput:
        return None


def validate_material(
    ca: str | None, cert: str | None, key: str | None, *, reject_unauthorized: bool
) -> TlsMaterial:
    """Decode and check everything; raise InvalidInput naming the field at fault."""
    ca_pem = None
    if ca is not None:
        ca_pem = "".join(_pem(c) for c in parse_certificates("ca", decode_base64("ca", ca)))
    cert_pem = key_pem = None
    if cert is not None or key is not None:
        if cert is None:
            raise _invalid("cert", "is required when a client key is given")
        if key is None:
            raise _invalid("key", "is required when a client certificate is given")
        certs = parse_certificates("cert", decode_base64("cert", cert))
        private_key = parse_private_key("key", decode_base64("key", key))
        if _public_der(private_key.public_key()) != _public_der(certs[0].public_key()):
            raise _invalid("key", "does not match the client certificate")
        cert_pem = "".join(_pem(c) for c in certs)
        key_pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
    return TlsMaterial(ca_pem, cert_pem, key_pem, reject_unauthorized)


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho-mqtt does not close its socket when the TLS handshake fails; this one does,
    so a broker with a bad certificate does not leak a file descriptor per attempt."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def build_ssl_context(material: TlsMaterial) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslsocket_class = _ClosingSSLSocket
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if material.ca_pem:
        ctx.load_verify_locations(cadata=material.ca_pem)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if not material.reject_unauthorized:
        # This order is required: CERT_NONE is refused while check_hostname is on.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if material.cert_pem and material.key_pem:
        _load_client_chain(ctx, material.cert_pem + material.key_pem)
    return ctx


def _in_memory_files() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def _load_client_chain(ctx: ssl.SSLContext, pem: str) -> None:
    """The ssl module loads a client chain only from a path. On Linux that path is an
    anonymous memory file (memfd), reopened through /proc/self/fd: the private key never
    reaches a disk, and nothing is left behind whatever happens to the process. Elsewhere:
    a 0600 file in a fresh 0700 temporary directory, removed at once."""
    data = pem.encode("ascii")
    if _in_memory_files():
        fd = os.memfd_create("mmc-client-chain", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="mmc-") as directory:  # mode 0700
        path = os.path.join(directory, "chain.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        ctx.load_cert_chain(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def context_from_base64(
    ca: str | None, cert: str | None, key: str | None, *, reject_unauthorized: bool
) -> ssl.SSLContext:
    material = validate_material(ca, cert, key, reject_unauthorized=reject_unauthorized)
    try:
        return build_ssl_context(material)
    except ssl.SSLError as exc:
        raise InvalidInput(f"TLS material was rejected by OpenSSL: {exc.reason or exc}") from None
