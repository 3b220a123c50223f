"""Arrays in memory-mapped ``.npy`` files with incremental, crash-safe checkpoints.

A storage directory holds one ``<name>.npy`` per array, created at full size as a sparse file (disk blocks are taken
only when rows are written; :func:`os.posix_fallocate` reserves each chunk of rows before its first write, so a full
disk raises ``OSError`` instead of killing the process with SIGBUS through the map), ``state.<generation>.pkl`` (the
small state of each kept checkpoint, written atomically) and ``undo.<generation>.log``.

Crash safety uses an undo journal. A checkpoint ("generation" ``g``) flushes the rows written since the previous one
and writes ``state.<g>.pkl``; afterwards, the first write into each chunk of rows first appends the chunk's current
content (or, for rows never written, a "fill" record without data) to ``undo.<g>.log`` and syncs it. Opening the
storage at generation ``t`` applies the journals of generations ``>= t``, newest first, which puts back exactly the
rows of checkpoint ``t``: rows written after it (completely, partly or not at all when the writer was killed) are
undone, and a torn last journal record is ignored because its rows had not been touched yet. Generations newer than
``t`` are then dropped. The newest ``keep`` (:data:`KEEP_GENERATIONS`) checkpoints stay reachable, so a run can resume from the
checkpoint before the newest (e.g. when it was killed between the buffer's checkpoint and its own).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import mmap
import os
import pickle
import shutil
import weakref
import zlib
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

# the file primitives, under the names this module always used (the crash tests patch _write_all and _read_records here)
from pvrw.drm.replay_files import DATA, FILL, RECORD, RECORD_MAGIC, STATE_RE, UNDO_RE
from pvrw.drm.replay_files import atomic_write as _atomic_write
from pvrw.drm.replay_files import close_fds as _close_fds
from pvrw.drm.replay_files import file_name as _name
from pvrw.drm.replay_files import fsync_dir as _fsync_dir
from pvrw.drm.replay_files import generations as _generations
from pvrw.drm.replay_files import pid_alive as _alive
from pvrw.drm.replay_files import read_records as _read_records
from pvrw.drm.replay_files import write_all as _write_all

KEEP_GENERATIONS = 2
CHUNK_BYTES = 8 << 20  # journal / flush / allocation granularity


@dataclass(frozen=True)
class ArraySpec:
    """One stored array: ``shape`` as the buffer indexes it; ``env_major`` stores axes 0 and 1 swapped on disk."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fill: float = 0
    env_major: bool = False

    @property
    def file_shape(self) -> tuple[int, ...]:  # noqa: D102
        return (self.shape[1], self.shape[0], *self.shape[2:]) if self.env_major else self.shape

    @cached_property
    def nbytes(self) -> int:  # noqa: D102
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @cached_property
    def row_bytes(self) -> int:
        """Bytes of one row (index along axis 0, all envs)."""
        return self.nbytes // self.shape[0]

    @cached_property
    def chunk_rows(self) -> int:
        """Rows per journal / flush / allocation chunk."""
        return max(1, CHUNK_BYTES // self.row_bytes)


class StorageError(RuntimeError):
    """A replay storage directory cannot be created or opened as asked."""


def holds_checkpoint(path: str | os.PathLike, generation: int, token: str | None = None) -> bool:
    """Whether the storage in ``path`` can still be opened at checkpoint ``generation`` (written as ``token``)."""
    try:
        with open(Path(path) / _name("state", generation, "pkl"), "rb") as f:
            return token is None or pickle.load(f)["token"] == token
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError):
        return False


def _lock(path: Path) -> int:
    fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StorageError(
            f"The replay storage {path} is open in another process (pid {holder}); close that buffer (or end that "
            "process) first, or use another path."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _remove_stale_creations(path: Path) -> None:
    """Delete ``.<name>.creating-<pid>`` folders of ``path`` left by a creation killed midway (no lock held)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.creating-*"):
        pid = stale.name.rpartition("-")[2]
        if pid.isdigit() and _alive(int(pid)):
            continue
        try:
            fd = _lock(stale)
        except (StorageError, OSError):
            continue  # being created now, or not ours to judge
        os.close(fd)
        shutil.rmtree(stale, ignore_errors=True)


class DiskArrays:
    """
    The arrays of one replay buffer in a storage directory; see the module docstring. Create with :meth:`create`,
    reopen with :meth:`open`. ``arrays[name]`` are numpy views of the maps (indexed as :class:`ArraySpec` ``shape``).
    Call :meth:`before_write` with the rows about to be written, before writing them.
    """

    def __init__(self, path: Path, specs: list[ArraySpec], generation: int, extents: dict[str, int], keep: int):
        self.path, self.specs, self.generation, self.keep = path, {s.name: s for s in specs}, generation, keep
        self.extents = dict(extents)  # rows [0, extent) may hold written data (chunk aligned)
        self._fds: list[int] = []
        self._finalizer = weakref.finalize(self, _close_fds, self._fds)
        self._maps: dict[str, mmap.mmap] = {}
        self.offsets: dict[str, int] = {}
        self._file_fds: dict[str, int] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.journaled = {s.name: np.zeros(-(-s.shape[0] // s.chunk_rows), dtype=bool) for s in specs}
        self.bytes_journaled = self.bytes_flushed = 0

    # --------------------------------------------------------------------------------------------- create / open
    @classmethod
    def create(cls, path: str | os.PathLike, specs: list[ArraySpec], state: bytes, keep: int = KEEP_GENERATIONS):
        """Create sparse files for ``specs`` in ``path`` (missing or empty) as generation 0 with small ``state``."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            what = "a file" if not path.is_dir() else "a replay storage" if _generations(path, STATE_RE) else "files"
            raise StorageError(
                f"{path} already holds {what}; open an existing replay storage with DrMReplayBuffer.open(path) or "
                "load_replay_buffer(...), or choose a new (or empty) directory."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_creations(path)
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        tmp.mkdir()
        lock_fd = _lock(tmp)
        for spec in specs:
            array = np.lib.format.open_memmap(tmp / f"{spec.name}.npy", "w+", np.dtype(spec.dtype), spec.file_shape)
            if spec.fill:  # only obs_frame (small) has a non-zero fill; the rest stays sparse
                array[...] = spec.fill
            array.flush()
        storage = cls(path, specs, 0, {s.name: 0 for s in specs}, keep)
        storage._fds.append(lock_fd)
        storage._write_state(tmp, 0, state)
        if path.exists():
            path.rmdir()  # an empty directory: replaced by the complete storage in one rename
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        storage._map_files()
        storage._open_journal(truncate=True)
        return storage

    @classmethod
    def open(
        cls, path: str | os.PathLike, generation: int | None = None, token: str | None = None
    ) -> tuple[DiskArrays, bytes]:
        """
        Open a storage at a kept checkpoint (``generation``, None: the newest): undo what was written after it, drop
        newer checkpoints. ``token`` (of that checkpoint, if known) refuses one written again after a roll-back.

        :return: the open storage and the small state saved with that checkpoint
        """
        path = Path(path)
        if not path.is_dir() or not _generations(path, STATE_RE):
            raise StorageError(f"{path} is not a replay storage (no state.<generation>.pkl in it).")
        lock_fd = _lock(path)
        try:
            kept = _generations(path, STATE_RE)
            target = kept[-1] if generation is None else int(generation)
            if target not in kept:
                raise StorageError(
                    f"The replay storage {path} does not hold checkpoint {target}: it keeps {kept}. A checkpoint "
                    "older than the kept ones cannot be restored (the rows it held have been overwritten)."
                )
            with open(path / _name("state", target, "pkl"), "rb") as f:
                saved = pickle.load(f)
            if token is not None and saved["token"] != token:
                raise StorageError(
                    f"Checkpoint {target} of the replay storage {path} is not the one asked for: the storage was "
                    "rolled back to an older checkpoint and written again since."
                )
            missing = set(range(target, kept[-1])) - set(_generations(path, UNDO_RE))
            if missing:
                raise StorageError(f"The replay storage {path} misses the undo journals {sorted(missing)}.")
            storage = cls(path, [ArraySpec(**s) for s in saved["specs"]], target, saved["extents"], saved["keep"])
            storage._fds.append(lock_fd)
            storage.token = saved["token"]
        except BaseException:
            os.close(lock_fd)
            raise
        storage._map_files()
        storage._roll_back(newer_states=[g for g in kept if g > target])
        return storage, saved["state"]

    def _map_files(self) -> None:
        for spec in self.specs.values():
            file = self.path / f"{spec.name}.npy"
            with open(file, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                offset = f.tell()
            if tuple(shape) != spec.file_shape or dtype != np.dtype(spec.dtype) or fortran:
                raise StorageError(f"{file} holds {dtype}{shape}, expected {spec.dtype}{spec.file_shape}.")
            fd = os.open(file, os.O_RDWR)
            self._fds.append(fd)
            self._maps[spec.name] = mm = mmap.mmap(fd, 0)
            self.offsets[spec.name] = offset
            array = np.ndarray(spec.file_shape, np.dtype(spec.dtype), buffer=mm, offset=offset)
            self.arrays[spec.name] = array.swapaxes(0, 1) if spec.env_major else array
            self._file_fds[spec.name] = fd

    def _roll_back(self, newer_states: list[int]) -> None:
        for stale in self.path.glob(".*.tmp"):  # a state file a killed checkpoint did not rename
            stale.unlink()
        # 1. newer checkpoints can no longer be opened (before any row changes: an interrupted roll-back is redone)
        for g in sorted(newer_states, reverse=True):
            (self.path / _name("state", g, "pkl")).unlink()
        _fsync_dir(self.path)
        # 2. undo every journal from the target on, newest first: each row ends as it was at the target
        undo = [g for g in _generations(self.path, UNDO_RE) if g >= self.generation]
        for g in sorted(undo, reverse=True):
            for kind, name, first, stop, payload in _read_records(self.path / _name("undo", g, "log")):
                array, spec = self.arrays[name], self.specs[name]
                if kind == DATA:
                    array[first:stop] = np.frombuffer(payload, spec.dtype).reshape(stop - first, *spec.shape[1:])
                else:
                    array[first:stop] = spec.fill
        for mm in self._maps.values():
            mm.flush()
        # 3. the journals are no longer needed: newest first, so the remaining ones still chain to the target
        for g in sorted(undo, reverse=True):
            if g > self.generation:
                (self.path / _name("undo", g, "log")).unlink()
        self._open_journal(truncate=True)

    # ------------------------------------------------------------------------------------------------- writes
    def _open_journal(self, truncate: bool) -> None:
        old = getattr(self, "_journal_fd", None)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        self._journal_fd = os.open(self.path / _name("undo", self.generation, "log"), flags, 0o644)
        self._fds.append(self._journal_fd)
        if old is not None:
            self._fds.remove(old)
            os.close(old)
        os.fsync(self._journal_fd)
        _fsync_dir(self.path)

    def _chunk_ranges(self, spec: ArraySpec, first: int, stop: int) -> list[tuple[int, int]]:
        # (file offset, bytes) of rows [first, stop)
        offset = self.offsets[spec.name]
        if not spec.env_major:
            return [(offset + first * spec.row_bytes, (stop - first) * spec.row_bytes)]
        frame_bytes, rows = spec.row_bytes // spec.shape[1], spec.shape[0]
        return [(offset + (env * rows + first) * frame_bytes, (stop - first) * frame_bytes) for env in range(spec.shape[1])]

    def before_write(self, name: str, rows: int | np.ndarray | None = None) -> None:
        """Journal (once per checkpoint) and allocate the chunks of ``rows`` (axis 0; None: all) before writing."""
        spec, journaled = self.specs[name], self.journaled[name]
        if rows is None:
            chunks = np.arange(len(journaled))
        elif isinstance(rows, int):
            if journaled[rows // spec.chunk_rows]:
                return
            chunks = np.array([rows // spec.chunk_rows])
        else:
            chunks = np.asarray(rows) // spec.chunk_rows
            if journaled[chunks].all():  # the common case: nothing to do
                return
            chunks = np.unique(chunks)
        for chunk in chunks[~journaled[chunks]]:
            first, stop = int(chunk) * spec.chunk_rows, min((int(chunk) + 1) * spec.chunk_rows, spec.shape[0])
            if first < self.extents[name]:
                payload = np.ascontiguousarray(self.arrays[name][first:stop]).tobytes()
                self._journal(DATA, name, first, stop, payload)
            else:
                for offset, size in self._chunk_ranges(spec, first, stop):
                    try:
                        os.posix_fallocate(self._file_fds[name], offset, size)
                    except OSError as error:
                        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                            raise OSError(
                                error.errno, f"No space left for the replay storage {self.path} ({error.strerror})"
                            ) from error
                self._journal(FILL, name, first, stop, b"")
                self.extents[name] = stop
            journaled[chunk] = True

    def _journal(self, kind: int, name: str, first: int, stop: int, payload: bytes) -> None:
        encoded = name.encode()
        header = RECORD.pack(RECORD_MAGIC, len(encoded), kind, first, stop, len(payload), zlib.crc32(payload))
        _write_all(self._journal_fd, header + encoded + payload)
        os.fdatasync(self._journal_fd)  # on disk before the rows it protects change
        self.bytes_journaled += RECORD.size + len(encoded) + len(payload)

    # --------------------------------------------------------------------------------------------- checkpoints
    def _write_state(self, directory: Path, generation: int, state: bytes) -> int:
        self.token = os.urandom(8).hex()
        saved = {"specs": [asdict(s) for s in self.specs.values()], "extents": self.extents, "keep": self.keep}
        saved.update(state=state, token=self.token)
        data = pickle.dumps(saved, protocol=pickle.HIGHEST_PROTOCOL)
        _atomic_write(directory / _name("state", generation, "pkl"), data)
        return len(data)

    def commit(self, state: bytes) -> int:
        """
        Checkpoint: flush the chunks written since the last checkpoint, write the small ``state`` atomically, start a
        new journal, drop checkpoints older than the kept ones. Cost: the rows written since the last checkpoint.

        :return: the new generation
        """
        for name, journaled in self.journaled.items():
            spec, mm, spans = self.specs[name], self._maps[name], []
            for chunk in np.flatnonzero(journaled):
                first, stop = int(chunk) * spec.chunk_rows, min((int(chunk) + 1) * spec.chunk_rows, spec.shape[0])
                spans += self._chunk_ranges(spec, first, stop)
            merged: list[list[int]] = []  # one msync per contiguous span of written chunks
            for offset, size in sorted(spans):
                if merged and offset <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], offset + size)
                else:
                    merged.append([offset, offset + size])
            for start, stop in merged:
                page = start - start % mmap.PAGESIZE
                mm.flush(page, min(stop, len(mm)) - page)
                self.bytes_flushed += stop - start
        generation = self.generation + 1
        self.bytes_state = self._write_state(self.path, generation, state)
        self.generation = generation
        self._open_journal(truncate=True)
        for name in self.journaled:
            self.journaled[name][:] = False
        for g in _generations(self.path, STATE_RE):
            if g <= generation - self.keep:
                (self.path / _name("state", g, "pkl")).unlink()  # the state first: no state without its journals
                (self.path / _name("undo", g, "log")).unlink(missing_ok=True)
        self.drop_mappings()
        return generation

    def drop_mappings(self) -> None:
        """Unmap the pages this process touched (they stay in the page cache): keeps the RSS to the working set."""
        for mm in self._maps.values():
            mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Unmap and unlock (uncommitted rows are undone at the next open)."""
        self.arrays.clear()
        for mm in self._maps.values():
            try:
                mm.close()
            except BufferError:  # a view is still alive somewhere: the map closes with it
                pass
        self._maps.clear()
        self._finalizer()
