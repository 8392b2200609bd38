"""The ``mmc`` command: ``mmc serve [--host] [--port] [--config]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from mmc.app import create_app
from mmc.config import ConfigError, load_settings
from mmc.crypto import SecretKeyError


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
        web.run_app(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.shutdown_timeout,
            print=lambda msg: logging.getLogger("mmc").info(
                "mmc listening on http://%s:%d (data in %s)",
                settings.host,
                settings.port,
                settings.data_dir.resolve(),
            ),
        )
    except SecretKeyError as exc:
        logging.getLogger("mmc").error("%s", exc)
        return 2
    return 0
