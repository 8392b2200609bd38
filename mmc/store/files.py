"""The store's files are mmc's alone: the data directory 0700, every file in it 0600.

They hold password hashes, token digests, encrypted broker secrets, the key that opens
them and the audit trail. Modes are set explicitly, whatever the umask; a directory or
file found with a wider mode (made by an older mmc, a restored backup, a hand-made
directory) is narrowed at start-up, with a log line saying so.

Blocking calls: run them in a thread (the store does, at start-up).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
# What SQLite puts beside a database file.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def private_directory(path: Path) -> None:
    """Create ``path`` (and its parents) if missing; make it 0700."""
    try:
        path.mkdir(mode=DIRECTORY_MODE, parents=True)
    except FileExistsError:
        _narrow(path, DIRECTORY_MODE, created=False)
    else:
        # mkdir's mode passes through the umask: set it as meant.
        _narrow(path, DIRECTORY_MODE, created=True)


def private_file(path: Path) -> None:
    """Create ``path`` empty if missing, 0600 from the first moment; narrow it if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        _narrow(path, FILE_MODE, created=False)
    else:
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)


def narrow_existing(paths: Iterable[Path]) -> None:
    """Make those of ``paths`` that exist 0600 (regular files only)."""
    for path in paths:
        _narrow(path, FILE_MODE, created=False)


def sqlite_files(db_path: Path) -> list[Path]:
    return [db_path.with_name(db_path.name + suffix) for suffix in SQLITE_SUFFIXES]


def secure_data_dir(data_dir: Path, files: Iterable[Path] = ()) -> None:
    """The data directory 0700 (created so if missing); those of ``files`` that exist
    (the key file, say) narrowed to 0600."""
    private_directory(data_dir)
    narrow_existing(files)


def prepare_sqlite_file(db_path: Path) -> None:
    """Before SQLite opens ``db_path``: its directory created 0700 if missing (an existing
    one may be shared: left alone), the database file created 0600 (SQLite gives the
    -wal and -shm files it makes the database file's mode) and the SQLite files that
    exist already narrowed to 0600."""
    if not db_path.parent.exists():
        private_directory(db_path.parent)
    private_file(db_path)
    narrow_existing(sqlite_files(db_path))


def _narrow(path: Path, mode: int, *, created: bool) -> None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    kind = stat.S_IFDIR if mode == DIRECTORY_MODE else stat.S_IFREG
    if stat.S_IFMT(st.st_mode) != kind:
        # A symlink or something else: not ours to change (and chmod would follow it).
        return
    current = stat.S_IMODE(st.st_mode)
    if current == mode:
        return
    what = "data directory" if kind == stat.S_IFDIR else "store file"
    try:
        os.chmod(path, mode)
    except PermissionError as exc:
        # Not the owner (a volume's root owned by root, say): mmc can still work in it.
        log.warning(
            "%s %s is mode %04o and cannot be changed to %04o (%s): make it mmc's alone",
            what,
            path,
            current,
            mode,
            exc.strerror,
        )
        return
    if not created:
        log.warning("%s %s was mode %04o: changed to %04o", what, path, current, mode)
