"""Full disks and HDF5 writers: hold disk space while writing, so that a write that fills the disk can still close.

HDF5 cannot close a file after a write failed for lack of space: the close flushes again, fails, frees the file's
state, and the next access (the close at garbage collection) crashes the process (h5py#914, exit 139). A writer
therefore holds a :class:`SpaceReserve` while it writes; when a write fails for lack of space, :class:`FullDiskGuard`
releases it and closes the file, which keeps every committed row, and raises :class:`~pvrw._diskspace.DiskFullError`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py

from pvrw._diskspace import DiskFullError, disk_full_errno, format_bytes, free_bytes
from pvrw.feature_cache._h5 import FeatureCacheError

logger = logging.getLogger(__name__)

#: disk space a writer holds beyond twice its largest write, for HDF5's metadata when it closes on a full disk
RESERVE_BYTES = 1 << 20


class SpaceReserve:
    """Disk space held in an unnamed file beside ``path`` (a killed process leaves nothing behind)."""

    def __init__(self, path: str | os.PathLike):
        self.directory = Path(path).absolute().parent
        self.size = 0
        self._file: Any = None

    def ensure(self, nbytes: int) -> None:
        """Hold at least ``nbytes``; raises the filesystem's :class:`OSError` (ENOSPC) when it cannot give them."""
        if nbytes <= self.size:
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.directory, prefix=".pvrw-reserve-")  # noqa: SIM115
        try:
            os.posix_fallocate(self._file.fileno(), 0, nbytes)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            logger.debug("%s cannot reserve disk space (%s); a full disk may crash HDF5", self.directory, error)
            return
        self.size = nbytes

    def release(self) -> int:
        """Give the space back; returns the bytes that were held."""
        held, self.size = self.size, 0
        if self._file is not None:
            self._file.close()
            self._file = None
        return held


def abandon(f: h5py.File) -> None:
    """Never close ``f`` again, not even at garbage collection: after a failed write, closing it could crash HDF5.

    Its HDF5 objects stay open until the process exits; the file on disk keeps the rows committed before.
    """
    for oid in [f.id, *f.id.get_obj_ids()]:
        oid.locked = True


class FullDiskGuard:
    """Runs the writes of one HDF5 file with disk space held for closing it, and turns a full disk into one error."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.reserve = SpaceReserve(path)
        self.failed = False

    @contextlib.contextmanager
    def writing(self, file: Callable[[], h5py.File], what: str, nbytes: int = 0) -> Iterator[None]:
        """Hold space for ``nbytes`` more, run the write; on a full disk close ``file()`` and raise DiskFullError.

        :param file: the open file (a callable: the write may reopen it).
        :param what: what is written, for the message ("16 rows of feature set 'dino'").
        :param nbytes: bytes the write adds (before compression).
        """
        if self.failed:
            raise FeatureCacheError(f"{self.path} was closed after its disk filled; open it again")
        try:
            self.reserve.ensure(2 * nbytes + RESERVE_BYTES)
        except OSError as error:
            if disk_full_errno(error) is None:
                raise
            raise self._error(what, nbytes, error) from error  # nothing written: the file is fine and stays open
        try:
            yield
        except BaseException as error:
            if disk_full_errno(error) is None:
                raise
            self.failed = True
            if self.reserve.release():
                try:
                    file().close()  # the released space lets HDF5 flush what it holds
                except Exception as close_error:  # noqa: BLE001 (another process took that space: nothing to do)
                    logger.warning("%s: could not close after its disk filled: %s", self.path, close_error)
            else:
                abandon(file())  # no space to flush: closing would crash HDF5
            raise self._error(what, nbytes, error) from error

    def close(self, f: h5py.File) -> None:
        """Release the reserve (closing flushes, and on a full disk needs that space), then close ``f``."""
        self.reserve.release()
        if f and not self.failed:
            f.close()

    def _error(self, what: str, nbytes: int, error: BaseException) -> DiskFullError:
        what = f"{what} ({format_bytes(nbytes)}) to {self.path}" if nbytes else f"{what} to {self.path}"
        head = (
            f"could not write {what}: {format_bytes(free_bytes(self.path))} are free, less than that needs with the"
            f" {format_bytes(2 * nbytes + RESERVE_BYTES)} a writer holds to close its file safely"
        )
        return DiskFullError(
            f"disk full: {head}; the rows committed before are intact",
            disk_full_errno(error) or errno.ENOSPC,
            what=what,
            head=head,
            written=nbytes,
        )
