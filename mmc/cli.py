"""The ``mmc`` command: ``mmc serve`` runs the API; ``mmc users ...`` manages its users."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from mmc import logs
from mmc.app import create_app
from mmc.auth.permissions import Role
from mmc.auth.service import AuthService
from mmc.config import ConfigError, Settings, load_settings
from mmc.crypto import SecretKeyError
from mmc.errors import MmcError
from mmc.eventloop import new_event_loop
from mmc.store.db import Database

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
    except KeyboardInterrupt:
        pass
    return 0


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM. Unlike ``web.run_app``, resources that did start are
    released even when a later start-up step fails."""
    # access_log=None: mmc's own middleware writes one structured line per request.
    runner = web.AppRunner(
        create_app(settings), shutdown_timeout=settings.shutdown_timeout, access_log=None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
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
        # Collect the young generation every 50,000 allocations, not 700: the objects of
        # one request or one broker message then die young instead of being promoted, and
        # full collections (tens of ms with a thousand links) become rare.
        gc.set_threshold(50_000, 20, 10)
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


async def _users(settings: Settings, args: argparse.Namespace) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with Database.open(settings.db_path) as db:
        auth = AuthService(db, settings)
        if args.action == "list":
            for user in await auth.users.list():
                print(f"{user.username}\t{','.join(user.roles)}")
        elif args.action == "add":
            await auth.create_user(
                args.username, _read_password(args.password_stdin), tuple(dict.fromkeys(args.role))
            )
            print(f"created user {args.username}")
        elif args.action == "passwd":
            await auth.update_user(args.username, password=_read_password(args.password_stdin))
            print(f"password of {args.username} changed; their sessions ended")
        elif args.action == "delete":
            await auth.delete_user(args.username)
            print(f"deleted user {args.username}")
    return 0
