"""Real Eclipse Mosquitto brokers for the tests and benchmarks, and their TLS material.

Everything listens on 127.0.0.1 only, on free ephemeral ports, and never touches
a system broker.  Processes started here are only ever signalled by their pid.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed import processes

__all__ = [
    "DYNSEC_PLUGIN",
    "HOST",
    "MOSQUITTO_20",
    "MOSQUITTO_21",
    "MOSQUITTO_BIN",
    "MOSQUITTO_CTRL_BIN",
    "MOSQUITTO_VERSIONS",
    "Mosquitto",
    "MosquittoBroker",
    "MosquittoError",
    "TlsMaterial",
    "client_ssl_context",
    "free_port",
    "make_tls_material",
    "mosquitto_available",
    "write_tls_files",
]

HOST = "127.0.0.1"


def _find_binary(env_var: str, name: str, fallback: str) -> str:
    override = os.environ.get(env_var)
    if override:
        return override
    found = shutil.which(name)
    if found:
        return found
    return fallback


MOSQUITTO_BIN = _find_binary("MMC_TEST_MOSQUITTO", "mosquitto", "/usr/sbin/mosquitto")
MOSQUITTO_CTRL_BIN = _find_binary(
    "MMC_TEST_MOSQUITTO_CTRL", "mosquitto_ctrl", "/usr/bin/mosquitto_ctrl"
)
DYNSEC_PLUGIN = os.environ.get(
    "MMC_TEST_DYNSEC_PLUGIN",
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
)
# Opt-in command prefix for every broker, e.g. valgrind (see `make plugin-memcheck`).
MOSQUITTO_WRAPPER = shlex.split(os.environ.get("MMC_TEST_MOSQUITTO_WRAPPER", ""))

REPO_ROOT = Path(__file__).resolve().parent.parent
# `make mosquitto-2.1` builds it here (testbed/build-mosquitto-2.1.sh).
MOSQUITTO_21_DIR = Path(
    os.environ.get("MMC_TEST_MOSQUITTO_21_DIR", REPO_ROOT / "build" / "mosquitto-2.1")
)


@dataclass(frozen=True)
class Mosquitto:
    """One mosquitto installation: the broker, its mosquitto_ctrl and dynamic-security plugin."""

    version: str  # "2.0", "2.1": what tests branch on
    broker: str
    ctrl: str
    dynsec_plugin: str
    # LD_LIBRARY_PATH for a build outside the system's library path (its libmosquitto).
    lib_dir: str | None = None
    # The client-control plugin built against this version's headers (`make mosquitto-2.1`);
    # None: plugin/mmc_client_control.so (`make plugin`, the system's headers).
    client_control_plugin: Path | None = None
    how_to_get: str = ""

    @property
    def id(self) -> str:
        return f"mosquitto-{self.version}"

    @property
    def has_control_api(self) -> bool:
        """``$CONTROL/broker/v1`` (``enable_control_api``) exists: 2.1 and later."""
        return self.version != "2.0"

    def env(self) -> dict[str, str]:
        """The environment its programs run in."""
        env = dict(os.environ)
        if self.lib_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (self.lib_dir, env.get("LD_LIBRARY_PATH")) if p
            )
        return env

    def installed_version(self) -> str | None:
        """The full version the broker reports (``mosquitto -h``), None if it cannot run."""
        try:
            result = subprocess.run(
                [self.broker, "-h"],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except OSError:
            return None
        first = result.stdout.splitlines()[0] if result.stdout else ""
        return first.removeprefix("mosquitto version ").strip() or None

    def available(self) -> str | None:
        """Return ``None`` if this mosquitto can be used, else a human readable reason.

        Project policy: tests must *fail* with this message, never skip.
        """
        problems: list[str] = []
        for label, path in (("mosquitto broker", self.broker), ("mosquitto_ctrl", self.ctrl)):
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                problems.append(f"{label} not found or not executable at {path!r}")
        if not os.path.isfile(self.dynsec_plugin):
            problems.append(f"dynamic-security plugin not found at {self.dynsec_plugin!r}")
        if not problems:
            return None
        return (
            f"Real Eclipse Mosquitto {self.version} is required for these tests: "
            + "; ".join(problems)
            + f". {self.how_to_get}"
        )


MOSQUITTO_20 = Mosquitto(
    "2.0",
    MOSQUITTO_BIN,
    MOSQUITTO_CTRL_BIN,
    DYNSEC_PLUGIN,
    how_to_get="Install it (Debian/Ubuntu: apt-get install mosquitto mosquitto-clients) "
    "or point MMC_TEST_MOSQUITTO / MMC_TEST_MOSQUITTO_CTRL / "
    "MMC_TEST_DYNSEC_PLUGIN at the binaries and plugin.",
)
MOSQUITTO_21 = Mosquitto(
    "2.1",
    str(MOSQUITTO_21_DIR / "sbin" / "mosquitto"),
    str(MOSQUITTO_21_DIR / "bin" / "mosquitto_ctrl"),
    str(MOSQUITTO_21_DIR / "lib" / "mosquitto_dynamic_security.so"),
    lib_dir=str(MOSQUITTO_21_DIR / "lib"),
    client_control_plugin=MOSQUITTO_21_DIR / "mmc_client_control.so",
    how_to_get="Build it with `make mosquitto-2.1` (or point MMC_TEST_MOSQUITTO_21_DIR "
    "at an installation prefix).",
)
MOSQUITTO_VERSIONS: dict[str, Mosquitto] = {m.version: m for m in (MOSQUITTO_20, MOSQUITTO_21)}


def mosquitto_available() -> str | None:
    """Return ``None`` if the system's mosquitto can be used, else a human readable reason."""
    return MOSQUITTO_20.available()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_block() -> range:
    """The ports this test process hands out: a block below the kernel's ephemeral range,
    one block per pytest-xdist worker.

    Ports in the ephemeral range are what every outgoing connection and every ``bind(0)``
    of every process takes, so a broker stopped for a restart could find its port taken
    by another worker's client, or by another worker's ``free_port()``. Below that range
    nothing is taken unless asked for by number, and the blocks keep workers apart.
    """
    low = _ephemeral_low()
    first = max(1025, low // 2)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or "1")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (low - first) // max(count, 1)
    return range(first + index * size, first + (index + 1) * size)


_BLOCK = _worker_block()
# A random start, so that two test runs on one machine rarely walk the same ports.
_next_port = secrets.randbelow(len(_BLOCK))


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago and that no other worker
    of this run hands out; each call in a process gives a different port (until its block
    of a few thousand wraps)."""
    global _next_port
    for _ in range(len(_BLOCK)):
        port = _BLOCK[_next_port % len(_BLOCK)]
        _next_port += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_BLOCK.start}-{_BLOCK.stop - 1}")


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsMaterial:
    """PEM encoded certificates and (unencrypted PKCS#8) keys for TLS tests."""

    ca_cert: bytes
    ca_key: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    other_ca_cert: bytes
    selfsigned_cert: bytes
    selfsigned_key: bytes
    expired_cert: bytes
    expired_key: bytes
    wrongname_cert: bytes
    wrongname_key: bytes


_LOCAL_SANS: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
]


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mmc tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    common_name: str,
    *,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> tuple[bytes, bytes]:
    """Create a leaf certificate; ``issuer=None`` means self-signed."""
    key = _new_key()
    subject = _name(common_name)
    if issuer is None:
        issuer_name, signing_key = subject, key
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    else:
        issuer_cert, signing_key = issuer
        issuer_name = issuer_cert.subject
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(signing_key, hashes.SHA256())
    return _cert_pem(cert), _key_pem(key)


def make_tls_material() -> TlsMaterial:
    """Generate a fresh CA plus assorted good and bad certificates (EC P-256)."""
    now = datetime.datetime.now(datetime.UTC)
    valid_from = now - datetime.timedelta(days=1)
    valid_to = now + datetime.timedelta(days=30)
    ca = _make_ca("mmc-test-ca")
    other_ca_cert, _ = _make_ca("mmc-unrelated-ca")
    server = ExtendedKeyUsageOID.SERVER_AUTH
    server_cert, server_key = _make_leaf(
        "localhost",
        sans=_LOCAL_SANS,
        usage=server,
        issuer=ca,
        not_before=valid_from,
        not_after=valid_to,
    )
    client_cert, client_key = _make_leaf(
        "mmc-test-client",
        sans=[],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        issuer=ca,
        not_before=valid_from,
        not_after=valid_to,
    )
    selfsigned_cert, selfsigned_key = _make_leaf(
        "localhost",
        sans=_LOCAL_SANS,
        usage=server,
        issuer=None,
        not_before=valid_from,
        not_after=valid_to,
    )
    expired_cert, expired_key = _make_leaf(
        "localhost",
        sans=_LOCAL_SANS,
        usage=server,
        issuer=ca,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    wrongname_cert, wrongname_key = _make_leaf(
        "other.example",
        sans=[x509.DNSName("other.example")],
        usage=server,
        issuer=ca,
        not_before=valid_from,
        not_after=valid_to,
    )
    return TlsMaterial(
        ca_cert=_cert_pem(ca[0]),
        ca_key=_key_pem(ca[1]),
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        other_ca_cert=_cert_pem(other_ca_cert),
        selfsigned_cert=selfsigned_cert,
        selfsigned_key=selfsigned_key,
        expired_cert=expired_cert,
        expired_key=expired_key,
        wrongname_cert=wrongname_cert,
        wrongname_key=wrongname_key,
    )


def write_tls_files(material: TlsMaterial, directory: Path) -> dict[str, Path]:
    """Write every field of ``material`` to ``directory/<field>.pem``.

    Returns a mapping from field name (e.g. ``"server_key"``) to file path.
    Files are mode 0644 and the directory 0755 so a broker that dropped
    privileges could still read them (these are throw-away test keys).
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    paths: dict[str, Path] = {}
    for field in fields(material):
        path = directory / f"{field.name}.pem"
        data: bytes = getattr(material, field.name)
        path.write_bytes(data)
        path.chmod(0o644)
        paths[field.name] = path
    return paths


def client_ssl_context(
    ca_pem: bytes | None,
    *,
    cert_chain: tuple[Path, Path] | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """Client-side SSL context trusting ``ca_pem`` (or nothing if ``None``).

    ``cert_chain`` is ``(certfile, keyfile)`` for mutual TLS.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem is not None:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    ctx.check_hostname = check_hostname
    if cert_chain is not None:
        ctx.load_cert_chain(str(cert_chain[0]), str(cert_chain[1]))
    return ctx


# --------------------------------------------------------------------- broker


class MosquittoError(RuntimeError):
    """The broker failed to start (message includes the log tail)."""


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


# Extra ACLs added to the admin role created by ``mosquitto_ctrl dynsec init``.
_ADMIN_EXTRA_ACLS: list[dict[str, Any]] = [
    {"acltype": acltype, "topic": "$CONTROL/#", "allow": True}
    for acltype in ("publishClientSend", "publishClientReceive", "subscribePattern")
]


class MosquittoBroker:
    """A real ``mosquitto`` process with listeners on free 127.0.0.1 ports.

    Attributes: ``host``, ``port`` (plain MQTT) and, with TLS material,
    ``tls_port``, ``mtls_port``, ``selfsigned_port``, ``expired_port`` and
    ``wrongname_port``.  Ports stay the same across :meth:`restart`.
    """

    host: str = HOST

    def __init__(
        self,
        workdir: Path,
        tls: TlsMaterial | None = None,
        *,
        dynsec: bool = True,
        admin_username: str = "admin",
        admin_password: str | None = None,
        sys_interval: int = 1,
        extra_conf: str = "",
        extra_plugins: list[Path] | None = None,
        early_plugins: list[Path] | None = None,
        early_conf: str = "",
        mosquitto: Mosquitto = MOSQUITTO_20,
        control_api: bool | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.mosquitto = mosquitto
        # A command prefix for this broker (valgrind, say); else MMC_TEST_MOSQUITTO_WRAPPER's.
        self.wrapper = MOSQUITTO_WRAPPER if wrapper is None else wrapper
        # $CONTROL/broker/v1 (listPlugins, listListeners): on where the version has it.
        self.control_api = mosquitto.has_control_api if control_api is None else control_api
        if self.control_api and not mosquitto.has_control_api:
            raise MosquittoError(f"mosquitto {mosquitto.version} has no enable_control_api")
        self.tls = tls
        self.dynsec = dynsec
        self.admin_username = admin_username
        self.admin_password = (
            admin_password if admin_password is not None else secrets.token_urlsafe(16)
        )
        self.sys_interval = sys_interval
        self.extra_conf = extra_conf
        # Loaded after dynamic-security, each with a "plugin <path>" line.
        self.extra_plugins = list(extra_plugins or [])
        # Loaded before dynamic-security, then early_conf (their plugin_opt_ lines): the
        # order of the "plugin" lines is the order in which 2.0 asks them to authenticate.
        self.early_plugins = list(early_plugins or [])
        self.early_conf = early_conf

        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.output_path = self.workdir / "mosquitto.out"
        self.dynsec_path = self.workdir / "dynsec.json"
        self.tls_files: dict[str, Path] | None = None

        self.port = free_port()
        self.tls_port: int | None = None
        self.mtls_port: int | None = None
        self.selfsigned_port: int | None = None
        self.expired_port: int | None = None
        self.wrongname_port: int | None = None
        if tls is not None:
            self.tls_port = free_port()
            self.mtls_port = free_port()
            self.selfsigned_port = free_port()
            self.expired_port = free_port()
            self.wrongname_port = free_port()

        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False

    # ------------------------------------------------------------ setup

    @property
    def ports(self) -> list[int]:
        """Every listener port of this broker."""
        candidates = [
            self.port,
            self.tls_port,
            self.mtls_port,
            self.selfsigned_port,
            self.expired_port,
            self.wrongname_port,
        ]
        return [p for p in candidates if p is not None]

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls is not None:
            self.tls_files = write_tls_files(self.tls, self.workdir / "tls")
        if self.dynsec:
            self._init_dynsec()
        self.conf_path.write_text(self._config_text(), encoding="utf-8")
        self.conf_path.chmod(0o644)
        self._prepared = True

    def _init_dynsec(self) -> None:
        if self.dynsec_path.exists():
            self.dynsec_path.unlink()
        # ``dynsec init <file> <user> [password]`` takes the password as an
        # optional positional argument; without it, it prompts on the tty.
        result = subprocess.run(
            [
                self.mosquitto.ctrl,
                "dynsec",
                "init",
                str(self.dynsec_path),
                self.admin_username,
                self.admin_password,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self.mosquitto.env(),
            timeout=30,
            check=False,
        )
        if result.returncode != 0 or not self.dynsec_path.exists():
            raise MosquittoError(
                f"mosquitto_ctrl dynsec init failed (rc={result.returncode}): "
                f"{result.stdout.decode(errors='replace')}"
                f"{result.stderr.decode(errors='replace')}"
            )
        config = json.loads(self.dynsec_path.read_text(encoding="utf-8"))
        for role in config.get("roles", []):
            if role.get("rolename") == "admin":
                acls: list[dict[str, Any]] = role.setdefault("acls", [])
                acls.extend(dict(acl) for acl in _ADMIN_EXTRA_ACLS)
                break
        else:
            raise MosquittoError(f"no 'admin' role in {self.dynsec_path}: {config!r}")
        self.dynsec_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.dynsec_path.chmod(0o644)

    def _config_text(self) -> str:
        lines = [
            "# generated by testbed/mosquitto.py",
            f"user {_current_user()}",
            "per_listener_settings false",
            f"allow_anonymous {'false' if self.dynsec else 'true'}",
            f"sys_interval {self.sys_interval}",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type all",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if self.control_api:
            lines.append("enable_control_api true")
        lines += ["", f"listener {self.port} {HOST}"]
        if self.tls_files is not None:
            f = self.tls_files

            def tls_listener(
                port: int | None, cert: str, key: str, *, mutual: bool = False
            ) -> list[str]:
                block = [
                    "",
                    f"listener {port} {HOST}",
                    f"certfile {f[cert]}",
                    f"keyfile {f[key]}",
                    f"cafile {f['ca_cert']}",
                ]
                if mutual:
                    block.append("require_certificate true")
                return block

            lines += tls_listener(self.tls_port, "server_cert", "server_key")
            lines += tls_listener(self.mtls_port, "server_cert", "server_key", mutual=True)
            lines += tls_listener(self.selfsigned_port, "selfsigned_cert", "selfsigned_key")
            lines += tls_listener(self.expired_port, "expired_cert", "expired_key")
            lines += tls_listener(self.wrongname_port, "wrongname_cert", "wrongname_key")
        for plugin in self.early_plugins:
            lines += ["", f"plugin {plugin}"]
        if self.early_conf:
            lines += ["", self.early_conf]
        if self.dynsec:
            lines += [
                "",
                f"plugin {self.mosquitto.dynsec_plugin}",
                f"plugin_opt_config_file {self.dynsec_path}",
            ]
        for plugin in self.extra_plugins:
            lines += ["", f"plugin {plugin}"]
        if self.extra_conf:
            lines += ["", self.extra_conf]
        return "\n".join(lines) + "\n"

    # -------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until every listener accepts connections."""
        if self.is_running:
            raise MosquittoError("broker already running")
        if not self._prepared:
            self._prepare()
        with self.output_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [*self.wrapper, self.mosquitto.broker, "-c", str(self.conf_path)],
                env=self.mosquitto.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        pending = list(self.ports)
        while pending:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise MosquittoError(
                    f"mosquitto exited with rc={rc} during startup\n{self._tail()}"
                )
            pending = [p for p in pending if not _port_open(p)]
            if not pending:
                break
            if time.monotonic() > deadline:
                self.kill()
                raise MosquittoError(
                    f"mosquitto did not open ports {pending} within {timeout}s\n{self._tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        if self._proc is not None:
            processes.stop(self._proc, timeout)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the broker and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._proc = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop (if running) and start again on the same ports and dynsec file."""
        self.stop()
        self.start(timeout)

    # ------------------------------------------------------------ logs

    def log_text(self) -> str:
        """The broker log file plus anything it printed on stdout/stderr."""
        parts: list[str] = []
        for path in (self.log_path, self.output_path):
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "".join(parts)

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ---------------------------------------------------- context manager

    def __enter__(self) -> MosquittoBroker:
        if not self.is_running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"MosquittoBroker({self.mosquitto.id}, workdir={str(self.workdir)!r}, "
            f"port={self.port}, "
            f"tls_port={self.tls_port}, pid={self.pid})"
        )
