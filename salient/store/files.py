"""Files of the store written so that a crash never leaves part of one, and the store's lock.

- Every file (a shard, a Parquet part) is written to a temp name, fsynced, then renamed, and the
  directory fsynced (with the parents of any directory the write created): a crash leaves the old
  file or the new one, never part of one. :func:`_atomic_steps` is that write as a generator, so
  the writer's pipeline can stop between writing the temp file and making it durable and visible.
- This process is the only writer of the store: an exclusive ``flock`` on ``OUT/.lock``
  (:class:`_Lock`); a second writer is refused, and the kernel drops the lock when the process dies.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SalientError


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _makedirs(d: Path) -> list[Path]:
    """``mkdir -p d``; returns the directories it created, outermost first."""
    new = []
    while not d.is_dir():
        new.append(d)
        d = d.parent
    for n in reversed(new):
        n.mkdir(exist_ok=True)
    return new[::-1]


def _atomic_steps(path: Path, tmp: Path, write: Callable[[Path], Any], durable: bool) -> Iterator[None]:
    """``write(tmp)``; yield; fsync it, rename it to ``path``, fsync the directory (and the parents
    of any directory it created): a crash leaves the old file or the new one, never part of one.
    Abandoned at the yield (closed), it removes the temp file."""
    new = _makedirs(path.parent)
    try:
        write(tmp)
        yield
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        for d in dict.fromkeys([path.parent, *(n.parent for n in new)]):
            _fsync(d, directory=True)


def _write_atomic(path: Path, tmp: Path, write: Callable[[Path], Any], durable: bool) -> None:
    for _ in _atomic_steps(path, tmp, write, durable):
        pass


class _Lock:
    """An exclusive advisory lock on ``OUT/.lock``; the kernel drops it when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SalientError(
                f"{path.parent} is being written by another process (pid {holder}); wait for it or use another out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _write_table_atomic(table: pa.Table, path: Path, durable: bool = True) -> None:
    _write_atomic(path, path.parent / f".{path.stem}.tmp", lambda tmp: pq.write_table(table, tmp), durable)

