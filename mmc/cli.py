"""The ``mmc`` command: ``mmc serve [--host] [--port] [--config]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from mmc.app import create_app
from mmc.config import ConfigError, Settings, load_settings
from mmc.crypto import SecretKeyError

log = logging.getLogger("mmc")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmc", description="Manage fleets of Mosquitto brokers.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", help="address to listen on (MMC_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (MMC_PORT, default 8088)")
    serve.add_argument(
        "--config", type=Path, help="TOML file (MMC_CONFIG, default config/mmc.toml)"
    )
    serve.add_argument(
        "--data-dir", type=Path, help="data directory (MMC_DATA_DIR, default ./data)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            args.config, host=args.host, port=args.port, data_dir=args.data_dir
        )
    except ConfigError as exc:
        print(f"mmc: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(settings))
    except (SecretKeyError, OSError) as exc:
        log.error("mmc cannot start: %s", exc)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM. Unlike ``web.run_app``, resources that did start are
    released even when a later start-up step fails."""
    runner = web.AppRunner(create_app(settings), shutdown_timeout=settings.shutdown_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info(
            "mmc listening on http://%s:%d (data in %s)",
            settings.host,
            settings.port,
            settings.data_dir.resolve(),
        )
        await stop.wait()
        log.info("mmc stopping")
    finally:
        await runner.cleanup()
