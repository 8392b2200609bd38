"""The ``mmc`` command: ``mmc serve`` runs the API; ``mmc users ...`` manages its users;
``mmc import-mmc`` migrates a Cedalo MMC's connections and users."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from cryptography.fernet import Fernet

from mmc import logs
from mmc.app import create_app
from mmc.appkeys import metrics_key
from mmc.auth.passwords import usable
from mmc.auth.permissions import Role
from mmc.config import ConfigError, Settings, load_settings
from mmc.crypto import (
    KEY_CHECK_PLAINTEXT,
    SecretBox,
    SecretKeyError,
    check_token_matches,
    key_file,
    load_secret_keys,
    parse_keys,
    write_key_file,
)
from mmc.errors import MmcError
from mmc.eventloop import new_event_loop
from mmc.rotation import rotate
from mmc.services.auth import AuthService
from mmc.services.mmc_import import (
    CREATED,
    REPLACED,
    ImportFileError,
    ImportReport,
    MmcImport,
    read_config,
    read_users,
)
from mmc.store import open_database
from mmc.store.audit import AuditEntry, AuditRepository
from mmc.store.connections import ConnectionRepository
from mmc.store.db import Database
from mmc.store.projects import ProjectRepository
from mmc.store.users import UserRepository
from mmc.web.hosts import warn_without_allowed_hosts
from mmc.web.server import AcceptErrorLog, ConnectionLimits, EdgeRunner, raise_open_file_limit

log = logging.getLogger("mmc")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, help="TOML file (MMC_CONFIG, default config/mmc.toml)"
    )
    common.add_argument(
        "--data-dir", type=Path, help="data directory (MMC_DATA_DIR, default ./data)"
    )

    parser = argparse.ArgumentParser(prog="mmc", description="Manage fleets of Mosquitto brokers.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", parents=[common], help="run the HTTP API")
    serve.add_argument("--host", help="address to listen on (MMC_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (MMC_PORT, default 8088)")

    users = sub.add_parser("users", help="manage mmc's users (works on the same store)")
    users_sub = users.add_subparsers(dest="action", required=True)
    users_sub.add_parser("list", parents=[common], help="list users and their roles")
    add = users_sub.add_parser("add", parents=[common], help="create a user")
    add.add_argument("username")
    add.add_argument(
        "--role",
        action="append",
        required=True,
        choices=[r.value for r in Role],
        help="a role; repeat for several",
    )
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    passwd = users_sub.add_parser("passwd", parents=[common], help="set a user's password")
    passwd.add_argument("username")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    delete = users_sub.add_parser("delete", parents=[common], help="delete a user")
    delete.add_argument("username")

    migrate = sub.add_parser(
        "import-mmc",
        parents=[common],
        help="import a Cedalo MMC's connections (config.json) and users into the store",
        description="Connections are checked as POST /api/connections checks them and stored "
        "with their secrets encrypted; those whose id exists already are skipped (or "
        "overwritten with --replace), those whose name belongs to another connection are "
        "not imported. Users whose password hash mmc cannot verify are created disabled "
        "(set a password with `mmc users passwd NAME`). Exit status: 0 when every entry is "
        "in mmc afterwards, 1 when some could not be imported (see the report), 2 when "
        "nothing was (unreadable file, store or key error).",
    )
    migrate.add_argument("path", type=Path, help="the MMC's config.json")
    migrate.add_argument("--users", type=Path, help="the MMC's users file (JSON)")
    migrate.add_argument(
        "--replace", action="store_true", help="overwrite connections whose id exists already"
    )
    migrate.add_argument(
        "--dry-run", action="store_true", help="print what would change, change nothing"
    )

    secrets = sub.add_parser("secrets", help="the key that encrypts stored broker secrets")
    secrets_sub = secrets.add_subparsers(dest="action", required=True)
    rotate = secrets_sub.add_parser(
        "rotate",
        parents=[common],
        help="re-encrypt every stored secret under a new key (the server may keep running)",
        description="The current key comes from MMC_SECRET_KEY (a comma list is accepted) or "
        "the data directory's key file; the new one from MMC_NEW_SECRET_KEY or --new-key-file. "
        "With the key file and no new key given, a new key is generated and the key file "
        "updated. Then restart mmc with the new key.",
    )
    rotate.add_argument("--new-key-file", type=Path, help="file holding the new Fernet key")
    secrets_sub.add_parser("generate", parents=[common], help="print a new Fernet key")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            args.config,
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            data_dir=args.data_dir,
        )
    except ConfigError as exc:
        print(f"mmc: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "secrets":
        try:
            return asyncio.run(_secrets(settings, args))
        except (SecretKeyError, MmcError, OSError) as exc:
            print(f"mmc: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 2
    if args.command == "import-mmc":
        try:
            return asyncio.run(_import_mmc(settings, args))
        except (ImportFileError, SecretKeyError, OSError) as exc:
            print(f"mmc: {exc}", file=sys.stderr)
            return 2
        except MmcError as exc:
            print(f"mmc: {exc.message}", file=sys.stderr)
            return 2
    if args.command == "users":
        try:
            return asyncio.run(_users(settings, args))
        except MmcError as exc:
            print(f"mmc: {exc.message}", file=sys.stderr)
            return 1
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(settings))
    except (SecretKeyError, OSError) as exc:
        log.error("mmc cannot start: %s", exc)
        return 2
    except MmcError as exc:  # the store cannot be reached or migrated
        log.error("mmc cannot start: %s", exc.message)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM. Unlike ``web.run_app``, resources that did start are
    released even when a later start-up step fails."""
    # access_log=None: mmc's own middleware writes one structured line per request.
    app = create_app(settings)
    runner = EdgeRunner(
        app,
        limits=ConnectionLimits.of(settings),
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrorLog(app[metrics_key]))
    raise_open_file_limit(settings)
    warn_without_allowed_hosts(settings)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        # What exists now (modules, classes, routes, schemas) lives as long as the process:
        # keep the garbage collector from walking it again and again.
        gc.collect()
        gc.freeze()
        # Collect the young generation every 10,000 allocations, not 700: the objects of
        # one request then die young instead of being promoted, and full collections (tens
        # of ms with a thousand links) stay rare. Not more: what a young collection frees
        # is mostly the cycles of ended connection attempts (500 links reconnecting make
        # some 15,000), and at 50,000 each collection stopped the loop for 40-60 ms.
        gc.set_threshold(10_000, 20, 10)
        url = f"http://{settings.host}:{settings.port}{settings.base_path}"
        log.info("mmc listening on %s (data in %s)", url, settings.data_dir.resolve())
        log.info(
            "API %s/api/connections | docs %s/api/docs | metrics %s/metrics | "
            "health %s/healthz, %s/readyz",
            url,
            url,
            url,
            url,
            url,
        )
        log.info(
            "log in as %r with MMC_ADMIN_PASSWORD, or with the password generated and logged "
            "at the first start (POST %s/auth)",
            settings.admin_username,
            url,
        )
        await stop.wait()
        log.info("mmc stopping")
    finally:
        await runner.cleanup()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat: ") != first:
        raise SystemExit("mmc: passwords do not match")
    return first


async def _audit_cli(
    db: Database, settings: Settings, action: str, target: dict[str, str], status: int = 200
) -> None:
    """Changes made on the command line are in the audit trail too."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    repo = AuditRepository(
        db,
        max_rows=settings.audit_max_rows,
        retention_days=settings.audit_retention_days,
        max_refusals=settings.audit_max_refusals,
    )
    await repo.insert(
        AuditEntry(
            request_id="cli",
            username=f"os:{user}",
            auth_method="cli",
            client="local",
            method="CLI",
            route=f"mmc {action}",
            target=target,
            status=status,
            error_code=None,
            duration_ms=0,
        )
    )


async def _secrets(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "generate":
        print(Fernet.generate_key().decode())
        return 0
    if settings.database_backend == "sqlite" and not settings.db_path.exists():
        raise SecretKeyError(f"no store at {settings.db_path}: nothing to rotate")
    from_file = not settings.secret_key
    path = key_file(settings.data_dir)
    if from_file and not path.exists():
        raise SecretKeyError(f"no MMC_SECRET_KEY and no key file at {path}")
    current = load_secret_keys(settings.secret_key, settings.data_dir)
    new_text = os.environ.get("MMC_NEW_SECRET_KEY")
    if args.new_key_file is not None:
        new_text = args.new_key_file.read_text()
    if new_text:
        new_keys = parse_keys(new_text)
        if len(new_keys) != 1:
            raise SecretKeyError("give exactly one new key")
        new = new_keys[0]
    elif from_file:
        new = Fernet.generate_key()
    else:
        raise SecretKeyError(
            "give the new key with MMC_NEW_SECRET_KEY or --new-key-file "
            "(create one with: mmc secrets generate)"
        )
    SecretBox(new)  # a usable key, or SecretKeyError now
    if from_file:
        # Both keys in the file first: whatever happens next, the store stays readable.
        write_key_file(path, [new, *current])
    async with open_database(settings) as db:
        report = await rotate(db, current, new)
        await _audit_cli(db, settings, "secrets rotate", {})
    if from_file:
        write_key_file(path, [new])
        where = f"the key file {path} holds the new key"
    else:
        where = "set MMC_SECRET_KEY to the new key"
    print(
        f"re-encrypted {report.secrets} secrets of {report.connections} connections under "
        f"the new key; {where} and restart mmc (until then it serves reads but refuses "
        "changes to connections)"
    )
    return 0


async def _users(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        auth = AuthService(db, settings)
        if args.action == "list":
            for user in await auth.users.list():
                line = f"{user.username}\t{','.join(user.roles)}"
                if not usable(user.password_hash):
                    line += "\tdisabled (no password: set one with mmc users passwd)"
                print(line)
        elif args.action == "add":
            await auth.create_user(
                args.username, _read_password(args.password_stdin), tuple(dict.fromkeys(args.role))
            )
            await _audit_cli(db, settings, "users add", {"username": args.username})
            print(f"created user {args.username}")
        elif args.action == "passwd":
            await auth.update_user(args.username, password=_read_password(args.password_stdin))
            await _audit_cli(db, settings, "users passwd", {"username": args.username})
            print(f"password of {args.username} changed; their sessions ended")
        elif args.action == "delete":
            await auth.delete_user(args.username)
            await _audit_cli(db, settings, "users delete", {"username": args.username})
            print(f"deleted user {args.username}")
    return 0


async def _store_box(db: Database, settings: Settings) -> SecretBox:
    """The key that encrypts the store's secrets, checked as ``mmc serve`` checks it."""
    if settings.database_backend != "sqlite" and not settings.secret_key:
        raise SecretKeyError(
            "MMC_SECRET_KEY is required with a PostgreSQL store: every replica must "
            "decrypt the same secrets"
        )
    box = SecretBox(
        await asyncio.to_thread(load_secret_keys, settings.secret_key, settings.data_dir)
    )
    token = await db.get_meta("key_check")
    if token is None:
        await db.set_meta("key_check", box.encrypt(KEY_CHECK_PLAINTEXT))
    else:
        check_token_matches(box, token)
    return box


async def _import_mmc(settings: Settings, args: argparse.Namespace) -> int:
    connections = read_config(args.path)
    users = read_users(args.users) if args.users is not None else []
    options = {
        "replace": args.replace,
        "dry_run": args.dry_run,
        "max_connections": settings.max_connections,
    }
    if args.dry_run and settings.database_backend == "sqlite" and not settings.db_path.exists():
        report = await MmcImport(None, None, **options).run(connections, users)
        report.notes.append(f"there is no store at {settings.db_path} yet: compared to none")
    else:
        async with open_database(settings) as db:
            if args.dry_run:
                # Only ids and names are read: no secret is decrypted, no key file created.
                box = SecretBox(Fernet.generate_key())
            else:
                box = await _store_box(db, settings)
                await ProjectRepository(db).ensure_default()
            run = MmcImport(ConnectionRepository(db, box), UserRepository(db), **options)
            report = await run.run(connections, users)
            if not args.dry_run:
                await _audit_import(db, settings, args, report)
    print("\n".join(report.lines()))
    return 0 if report.complete else 1


async def _audit_import(
    db: Database, settings: Settings, args: argparse.Namespace, report: ImportReport
) -> None:
    """One entry per connection or user created or replaced, and one for the run (207
    when some entries were not imported)."""
    for item in report.items:
        if item.outcome not in (CREATED, REPLACED):
            continue
        key = "connectionId" if item.kind == "connection" else "username"
        target = {key: item.label, "result": item.outcome}
        if item.disabled:
            target["login"] = "disabled"
        await _audit_cli(db, settings, "import-mmc", target)
    summary = {"file": str(args.path), "connections": report.summary("connection")}
    if args.users is not None:
        summary["usersFile"] = str(args.users)
        summary["users"] = report.summary("user")
    await _audit_cli(db, settings, "import-mmc", summary, 200 if report.complete else 207)
