"""Log lines: JSON timestamps are UTC, as their "Z" says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import logging
    from mmc.logs import JsonFormatter

    record = logging.makeLogRecord(
        {"msg": "hello", "levelname": "INFO", "created": 1_700_000_000.5, "msecs": 500.0}
    )
    print(JsonFormatter().format(record))
""")


def test_json_timestamps_are_utc_in_any_time_zone() -> None:
    # A process of its own: the time zone is read at start-up (and shared by all threads).
    for zone in ("JST-9", "EST+5", "UTC0"):
        result = subprocess.run(
            [sys.executable, "-c", PROBE],
            env={**os.environ, "TZ": zone},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        line = json.loads(result.stdout)
        assert line["time"] == "2023-11-14T22:13:20.500Z", zone
        assert line["message"] == "hello"


SQL_PROBE = textwrap.dedent("""
    import asyncio, logging
    import aiosqlite
    from mmc.logs import configure

    configure("DEBUG", "text")

    async def main() -> None:
        async with aiosqlite.connect(":memory:") as db:
            await db.execute("SELECT ?", ("scrypt$15$secret-parameter",))
        logging.getLogger("mmc.probe").debug("own debug line")

    asyncio.run(main())
""")


def test_debug_logging_never_prints_sql_parameters() -> None:
    # aiosqlite logs each statement with its parameters at DEBUG (password hashes, token
    # digests, encrypted secrets); MMC_LOG_LEVEL=DEBUG must not turn that on.
    result = subprocess.run(
        [sys.executable, "-c", SQL_PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert "own debug line" in result.stderr
    assert "secret-parameter" not in result.stderr + result.stdout
