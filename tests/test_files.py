"""The data directory is 0700 and every store file 0600, whatever the umask; wider modes
found at start-up are narrowed, with a log line."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmc.appkeys import db_key
from mmc.config import Settings
from mmc.store.files import narrow_existing
from tests.conftest import MakeClient


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o000], ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    # Process-wide, so set around the whole test and put back.
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def store_files(data: Path) -> list[Path]:
    return [data / name for name in ("mmc.sqlite3", "mmc.sqlite3-wal", "mmc.sqlite3-shm")] + [
        data / "secret.key"
    ]


async def test_a_new_store_is_private_whatever_the_umask(
    umask: int, make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.replace(data_dir=tmp_path / "deep" / "data")
    client = await make_client(settings)
    # Written to: the WAL and its index exist.
    resp = await client.post("/api/projects", json={"id": "p1", "name": "P1"})
    assert resp.status == 201, await resp.text()
    await client.app[db_key].ping()
    data = settings.data_dir
    assert mode(data) == 0o700
    for path in store_files(data):
        assert path.exists(), path
        assert mode(path) == 0o600, (path, oct(mode(path)))
    # Nothing else in there is readable by others either.
    for path in data.iterdir():
        assert mode(path) & 0o077 == 0, path


async def test_a_database_elsewhere_gets_a_private_directory(
    umask: int, make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    db = tmp_path / "elsewhere" / "store.db"
    settings = settings.replace(database_url=f"sqlite:///{db}")
    await make_client(settings)
    assert mode(db.parent) == 0o700
    for suffix in ("", "-wal", "-shm"):
        assert mode(db.with_name(db.name + suffix)) == 0o600, suffix


async def test_wide_modes_are_narrowed_at_start_up_with_a_log_line(
    make_client: MakeClient,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A store as an older mmc left it: directory 0755, files 0644.
    client = await make_client(settings)
    await client.close()
    data = settings.data_dir
    files = [p for p in store_files(data) if p.exists()]
    assert len(files) >= 2
    data.chmod(0o755)
    for path in files:
        path.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="mmc.store.files"):
        await make_client(settings)
    assert mode(data) == 0o700
    for path in files:
        assert mode(path) == 0o600, path
    messages = [r.getMessage() for r in caplog.records if r.name == "mmc.store.files"]
    assert f"data directory {data} was mode 0755: changed to 0700" in messages
    for path in files:
        assert f"store file {path} was mode 0644: changed to 0600" in messages

    # Already private: nothing to say the next time.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmc.store.files"):
        await make_client(settings)
    assert [r for r in caplog.records if r.name == "mmc.store.files"] == []


def test_a_symlinked_store_file_is_not_followed(tmp_path: Path) -> None:
    # chmod through a link could change a file that is not the store's.
    target = tmp_path / "not-ours"
    target.write_text("x")
    target.chmod(0o644)
    link = tmp_path / "link"
    link.symlink_to(target)
    narrow_existing([link])
    assert mode(target) == 0o644
