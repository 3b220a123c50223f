"""HDF5 plumbing shared by the feature store and the episode datasets: safe opening, appendable tables, recovery.

The crash-safety model, in one place:

* Every file is written in SWMR mode (``libver="latest"``, ``swmr_mode = True``). All groups and datasets are created
  *before* SWMR starts (HDF5 cannot add objects in SWMR mode); afterwards the writer only resizes and writes.
* Datasets that grow together form a :class:`Table`: a group holding them plus a small ``committed`` counter dataset
  (one int64 per row axis). An append resizes, writes and flushes the data, and only then writes and flushes the
  counter. Readers trust ``committed`` and nothing else, so rows beyond it (an append cut off by a kill) are invisible.
* A SWMR file whose writer died keeps HDF5's "open for write" flag, and HDF5 then refuses to open it for writing.
  Opening such a file for writing copies it (committed rows only) to a fresh file and atomically replaces it;
  readers never need that, because a SWMR read-open works on such a file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pvrw._diskspace import DiskFullError, disk_full_errno, format_bytes, free_bytes

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
COUNTER = "committed"
SLOT_ATTR = "count_slot"
_BUSY_MARKER = "already open for write"
_TRUNCATED = re.compile(r"truncated file: eof = (?P<size>\d+),.*stored_eof = (?P<stored>\d+)")


class FeatureCacheError(Exception):
    """A feature-cache or episode file cannot be used as asked (wrong kind, corrupt, busy or mismatching)."""


class FeatureSetMismatchError(FeatureCacheError, ValueError):
    """A feature set in a file was written by another backbone, weights, resolution, preprocessing or dtype."""


class FileBusyError(FeatureCacheError):
    """Another live process is writing the file."""


def _is_busy_error(error: OSError) -> bool:
    return _BUSY_MARKER in str(error)


def describe_open_error(path: str | os.PathLike, error: OSError, expected_format: str) -> FeatureCacheError:
    """Turn an h5py open failure into one clear message."""
    path = Path(path)
    if not path.exists():
        return FeatureCacheError(f"{path}: no such file")
    if path.is_dir():
        return FeatureCacheError(f"{path} is a directory; pass the path of a file in it, e.g. {path / 'features.h5'}")
    if "already open for read-only" in str(error):
        return FileBusyError(f"{path} is already open read-only in this process; close that handle before writing")
    if _is_busy_error(error):
        return FileBusyError(
            f"{path} is open for writing by another process (or one died while setting it up). Wait for it to finish;"
            f" if no writer is running, clear the flag with `h5clear -s {path}` (hdf5-tools) and retry."
        )
    cut = _TRUNCATED.search(str(error))
    if cut:
        return FeatureCacheError(
            f"{path} is truncated: it has {cut['size']} of the {cut['stored']} bytes its HDF5 header records (a copy"
            f" or a write was cut off) and cannot be read as a {expected_format} file. Restore a complete copy, or"
            " delete it and write it again"
        )
    return FeatureCacheError(
        f"{path} is not a readable HDF5 file ({error}); it is corrupt or not a {expected_format} file."
        " Delete it or point to the right file."
    )


def check_format(f: h5py.File, expected_format: str) -> None:
    """Refuse foreign HDF5 files and files of the other pvrw kind, naming what was found."""
    found = f.attrs.get("pvrw_format")
    if isinstance(found, bytes):
        found = found.decode()
    if found != expected_format:
        what = f"a pvrw {found!r} file" if found else "an HDF5 file that pvrw did not write"
        raise FeatureCacheError(f"{f.filename} is {what}; expected a {expected_format!r} file")
    version = int(f.attrs.get("pvrw_format_version", -1))
    if version > FORMAT_VERSION:
        raise FeatureCacheError(
            f"{f.filename} has format version {version}, newer than this pvrw understands ({FORMAT_VERSION});"
            " upgrade pvrw"
        )


def _checked(f: h5py.File, expected_format: str) -> h5py.File:
    """``f`` if it is a pvrw file of ``expected_format``; otherwise it is closed and the error raised."""
    try:
        check_format(f, expected_format)
    except Exception:
        f.close()
        raise
    return f


def _open_swmr_reader(path: str | os.PathLike, what: str, rdcc_nbytes: int = 64 << 20) -> h5py.File:
    """Open any HDF5 file read-only in SWMR-read mode, after checking its integrity; ``what`` names it in errors.

    A writer that is still setting the file up (before it enters SWMR mode) makes HDF5 refuse readers; that phase is
    short, so this retries for about two seconds before giving up with :class:`FileBusyError`.
    """
    deadline = time.monotonic() + 2.0
    try:
        # A plain open first: it checks the file's integrity (a SWMR read-open skips the end-of-file check and retries
        # unreadable metadata for minutes on a truncated file). It fails only on files flagged open by a writer.
        h5py.File(path, "r").close()
    except OSError as error:
        if not _is_busy_error(error):
            raise describe_open_error(path, error, what) from None
    while True:
        try:
            return h5py.File(path, "r", libver="latest", swmr=True, rdcc_nbytes=rdcc_nbytes, rdcc_nslots=1_000_003)
        except OSError as error:
            if _is_busy_error(error) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise describe_open_error(path, error, what) from None


def open_for_reading(path: str | os.PathLike, expected_format: str, rdcc_nbytes: int = 64 << 20) -> h5py.File:
    """Open a pvrw file of ``expected_format`` read-only in SWMR-read mode, which also works while a writer appends
    and after a writer was killed (see :func:`_open_swmr_reader`)."""
    return _checked(_open_swmr_reader(path, expected_format, rdcc_nbytes), expected_format)


def file_format(path: str | os.PathLike) -> str:
    """The ``pvrw_format`` attribute of an HDF5 file (``""`` if it has none), checked like :func:`open_for_reading`.

    :raises FeatureCacheError: if the file is missing, truncated, corrupt or busy being set up.
    """
    with _open_swmr_reader(path, "pvrw", rdcc_nbytes=1 << 20) as f:
        return str_attr(f, "pvrw_format")


def _create_empty(path: Path, expected_format: str, attrs: Mapping[str, Any]) -> None:
    """Create a new file with its format attributes; atomic (a kill leaves either no file or a complete one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs["pvrw_format"] = expected_format
            f.attrs["pvrw_format_version"] = FORMAT_VERSION
            for key, value in attrs.items():
                f.attrs[key] = value
    except Exception as error:
        tmp.unlink(missing_ok=True)
        code = disk_full_errno(error)
        if code is None:
            raise
        head = f"could not create {path} ({format_bytes(free_bytes(path))} free)"
        raise DiskFullError(f"disk full: {head}; free space and retry", code, what=str(path), head=head) from error
    try:
        os.link(tmp, path)  # fails if another process created it meanwhile; theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _writer_alive(path: Path, expected_format: str) -> bool:
    """Whether the process recorded as the file's writer still runs (unknown host counts as alive)."""
    f = open_for_reading(path, expected_format)
    try:
        pid = int(f.attrs.get("writer_pid", -1))
        host = f.attrs.get("writer_host", "")
    finally:
        f.close()
    if isinstance(host, bytes):
        host = host.decode()
    if host != socket.gethostname():
        return True
    if pid == os.getpid():
        return True  # this very process holds it open through another handle
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def recover(path: str | os.PathLike, expected_format: str) -> None:
    """Rewrite a file whose writer died: keep committed rows only, clear the open-for-write flag, replace atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.recover.tmp")
    needed, free = path.stat().st_size + (1 << 20), free_bytes(path)
    if free < needed:  # checked first: HDF5 crashes closing a file whose write failed for lack of space
        head = (
            f"could not recover {path}, whose writer died: its copy needs {format_bytes(needed)},"
            f" {format_bytes(free)} are free"
        )
        message = f"disk full: {head}; the file is unchanged. Free space and retry"
        raise DiskFullError(message, what=f"a recovered copy of {path}", head=head, written=needed)
    src = open_for_reading(path, expected_format)
    try:
        with h5py.File(tmp, "w", libver="latest") as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for name in src:
                src.copy(src[name], dst, name=name)
            for table in find_tables(dst):
                table.truncate_to_committed()
    finally:
        src.close()
    os.replace(tmp, path)
    logger.warning("%s: its last writer died; recovered all committed rows into a fresh file", path)


def open_for_writing(
    path: str | os.PathLike, expected_format: str, create_attrs: Mapping[str, Any] | None = None
) -> h5py.File:
    """Open (creating if needed) for appending, NOT yet in SWMR mode: create objects, then call :func:`start_swmr`.

    A file left "open for write" by a dead writer on this host is recovered first (see :func:`recover`); one held by
    a live process raises :class:`FileBusyError`.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_empty(path, expected_format, create_attrs or {})
    else:
        open_for_reading(path, expected_format).close()  # never open a foreign or corrupt file for writing
    for attempt in range(2):
        try:
            f = h5py.File(path, "a", libver="latest", rdcc_nbytes=64 << 20, rdcc_nslots=1_000_003)
            break
        except OSError as error:
            if attempt == 0 and _is_busy_error(error):
                try:
                    alive = _writer_alive(path, expected_format)
                except FileBusyError:
                    raise describe_open_error(path, error, expected_format) from None
                if alive:
                    raise FileBusyError(
                        f"{path} is being written by another live process; open it read-only (readers work while it"
                        " appends) or wait for that process to finish"
                    ) from None
                recover(path, expected_format)
                continue
            raise describe_open_error(path, error, expected_format) from None
    return _checked(f, expected_format)


def start_swmr(f: h5py.File) -> None:
    """Record this process as the writer, truncate uncommitted tails, flush, enter SWMR mode (no new objects after)."""
    for table in find_tables(f):
        table.truncate_to_committed()
    f.attrs["writer_pid"] = os.getpid()
    f.attrs["writer_host"] = socket.gethostname()
    f.flush()
    f.swmr_mode = True


def json_attr(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def str_attr(obj: h5py.HLObject, key: str, default: str = "") -> str:
    value = obj.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


class Table:
    """Datasets in one group that grow along axis 0, each counted by one slot of the group's ``committed`` counter.

    Appends are two-phase: :meth:`append` writes and flushes data past the committed end, :meth:`commit` then writes
    the new counts in one small write and flushes. A reader (or a later writer) ignores everything past the counts.
    """

    def __init__(self, group: h5py.Group):
        if COUNTER not in group:
            raise FeatureCacheError(
                f"{group.file.filename}:{group.name} has no '{COUNTER}' counter; the file is corrupt"
            )
        self.group = group
        self.counter = group[COUNTER]
        self._datasets: dict[str, h5py.Dataset] = {}

    @staticmethod
    def create(group: h5py.Group, n_slots: int) -> Table:
        group.create_dataset(COUNTER, data=np.zeros(n_slots, dtype=np.int64), dtype=np.int64)
        return Table(group)

    def create_column(
        self,
        name: str,
        row_shape: tuple[int, ...],
        dtype: Any,
        slot: int = 0,
        chunk_rows: int | None = None,
        compression: str | None = "lzf",
        chunk_bytes: int = 1 << 16,
    ) -> h5py.Dataset:
        """Create an empty appendable column; chunks hold about ``chunk_bytes`` (small chunks: cheap random reads)."""
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if chunk_rows is None:
            chunk_rows = int(min(1024, max(1, chunk_bytes // max(1, row_bytes))))
        ds = self.group.create_dataset(
            name,
            shape=(0, *row_shape),
            maxshape=(None, *row_shape),
            chunks=(chunk_rows, *row_shape),
            dtype=dtype,
            compression=compression,
        )
        ds.attrs[SLOT_ATTR] = slot
        return ds

    def counts(self, refresh: bool = False) -> np.ndarray:
        if refresh:
            self.counter.refresh()
        return self.counter[...].astype(np.int64)

    def columns(self) -> Iterable[h5py.Dataset]:
        for item in self.group.values():
            if isinstance(item, h5py.Dataset) and SLOT_ATTR in item.attrs:
                yield item

    def append(self, column: str, rows: np.ndarray, start: int) -> int:
        """Write ``rows`` at ``start`` (the committed end of the column's slot) and flush; return the new end."""
        ds = self._datasets.get(column)
        if ds is None:  # h5py group lookups are slow (~1 ms in SWMR mode): keep the handles
            ds = self._datasets[column] = self.group[column]
        end = start + len(rows)
        if ds.shape[0] != end:
            ds.resize(end, axis=0)
        if len(rows):
            ds[start:end] = rows
        ds.flush()
        return end

    def commit(self, counts: Iterable[int]) -> None:
        """Publish new counts (after the data they cover was flushed) in one write."""
        self.counter[...] = np.asarray(list(counts), dtype=np.int64)
        self.counter.flush()
        self.group.file.flush()

    def truncate_to_committed(self) -> None:
        counts = self.counts()
        for ds in self.columns():
            n = int(counts[int(ds.attrs[SLOT_ATTR])])
            if ds.shape[0] != n:
                ds.resize(n, axis=0)


def find_tables(f: h5py.File) -> list[Table]:
    tables: list[Table] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and COUNTER in obj:
            tables.append(Table(obj))

    if COUNTER in f:
        tables.append(Table(f))
    f.visititems(visit)
    return tables
