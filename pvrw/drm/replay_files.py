"""File primitives of the disk replay storage (:mod:`pvrw.drm.replay_disk`): the names of its checkpoint files,
durable writes, and the record format of its undo journals.

Split from :mod:`pvrw.drm.replay_disk` only to keep modules short; that module imports these under the private names
it always used (``_name``, ``_fsync_dir``, ...), which the crash tests patch there.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

STATE_RE = re.compile(r"state\.(\d{8})\.pkl$")
UNDO_RE = re.compile(r"undo\.(\d{8})\.log$")
RECORD = struct.Struct("<4sHBqqqI")  # magic, name length, kind, first row, stop row, payload bytes, crc32
RECORD_MAGIC = b"UREC"
DATA, FILL = 0, 1


def file_name(prefix: str, generation: int, suffix: str) -> str:
    """``state.00000003.pkl``: the file of a checkpoint generation."""
    return f"{prefix}.{generation:08d}.{suffix}"


def generations(path: Path, pattern: re.Pattern) -> list[int]:
    """The generations of the files in ``path`` that match ``pattern`` (:data:`STATE_RE`, :data:`UNDO_RE`), sorted."""
    return sorted(int(m.group(1)) for p in path.iterdir() if (m := pattern.match(p.name)))


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view) :]


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``, durably: a reader sees the old file or the whole new one."""
    # as pvrw.runs.layout.atomic_write_bytes, plus a directory fsync (the rename commits); drm does not import runs
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_records(path: Path) -> Iterator[tuple[int, str, int, int, bytes]]:
    """Yield ``(kind, name, first, stop, payload)`` of the complete records of a journal; stop at a torn one."""
    with open(path, "rb") as f:
        while header := f.read(RECORD.size):
            if len(header) < RECORD.size:
                return
            magic, name_len, kind, first, stop, size, crc = RECORD.unpack(header)
            name, payload = f.read(name_len), f.read(size)
            if magic != RECORD_MAGIC or len(name) < name_len or len(payload) < size or zlib.crc32(payload) != crc:
                return
            yield kind, name.decode(), first, stop, payload


def close_fds(fds: list[int]) -> None:
    """Close and remove every descriptor of ``fds`` (a storage's finalizer)."""
    while fds:
        os.close(fds.pop())
