"""Full disks: recognising the error (also inside HDF5's messages), measuring space, and one exception that says it.

:class:`DiskFullError` is an :class:`OSError` (``errno`` ENOSPC or EDQUOT) whose message is one sentence for the
user: what could not be written, the space it needs, what is intact and how to continue.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import traceback
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# HDF5 reports a failed write as text (h5py raises RuntimeError/OSError with errno None): "errno = 28, ..."
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


class DiskFullError(OSError):
    """A write failed (or was refused before it could fail) because the disk or the user's quota is full."""

    def __init__(
        self,
        message: str,
        code: int = errno.ENOSPC,
        *,
        what: str | None = None,
        head: str | None = None,
        written: int = 0,
    ):
        """
        :param message: the whole one-line message.
        :param code: ``errno.ENOSPC`` or ``errno.EDQUOT``.
        :param what: what could not be written, e.g. "the checkpoint at frame 200" (for callers that re-word it).
        :param head: the message's first clause (what failed, the space), for callers that add what is intact.
        :param written: bytes written before the write failed (or that it needed), a lower bound of what it needs.
        """
        super().__init__(code, message)
        self.message, self.what, self.head, self.written = message, what, head or message, written

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple:  # pickled by Ray (a trial's error): rebuilt with the message, then its attributes
        return type(self), (self.message, self.errno), self.__dict__


def disk_full_errno(error: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT if ``error``, or an error it was raised from or while handling, is a full disk; else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return error.errno
        if isinstance(error, (OSError, RuntimeError)):
            found = _HDF5_ERRNO.search(str(error))
            if found and int(found.group(1)) in DISK_FULL_ERRNOS:
                return int(found.group(1))
        error = error.__cause__ or error.__context__
    return None


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free for this user on the filesystem holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def tree_bytes(path: str | os.PathLike) -> int:
    """Total size of a file or of the files under a directory (0 if missing)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def release_frames(error: BaseException | None) -> None:
    """Drop the local variables of the finished frames of ``error``'s tracebacks (and of the errors it chains).

    A write that failed half-way may leave its file open in a frame the traceback keeps alive; its space is given back
    only when that file is closed, and on a full disk that space is what the error report needs.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
