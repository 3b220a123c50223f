"""Where a :class:`~pvrw.drm.buffers.DrMReplayBuffer` keeps its arrays, and how it is saved.

- ``storage="memory"`` (default, SB3's habit): numpy arrays allocated at full capacity. Pickling (what SB3's
  ``save_replay_buffer`` does) writes only the filled part of each array plus the ring positions and episode
  bookkeeping; unpickling allocates the full capacity again. Pickles written before this (whole arrays) still load.
- ``storage="disk"``: the arrays live in memory-mapped files under ``path`` (:mod:`pvrw.drm.replay_disk`); Python
  holds only the small state (ring positions, per-env frame counters, open episodes). RAM holds the working set
  (page cache; the process unmaps the pages it mapped once they pass ``DROP_MAPPINGS_BYTES``, so its RSS stays
  bounded); a stack's frames are adjacent in the file. :meth:`checkpoint` costs the rows written since the previous
  one. Pickling a disk buffer checkpoints it and writes a reference
  (path, checkpoint number) only, so ``save_replay_buffer`` / ``load_replay_buffer`` work unchanged and resume
  without reading the data. Pickled within :func:`pickle_directory` (``DrM.save_replay_buffer`` /
  ``load_replay_buffer`` and run checkpoints do it), the reference holds the path relative to the pickle's folder, so
  a run directory that moved (or is mounted elsewhere on another node) reopens its own storage. The files are
  created on first use, so a model built to load a saved buffer (``DrM.load`` then ``load_replay_buffer``) does not
  touch the storage before it is opened.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pickle
import shutil
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch as th
from stable_baselines3.common.utils import get_device

from pvrw.drm.replay_disk import ArraySpec, DiskArrays, StorageError

try:  # same optional dependency as SB3's memory check
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

STORAGES = ("memory", "disk")
ARRAY_NAMES = ("frames", "obs_frame", "actions", "rewards", "dones", "timeouts")
TRANSITION_ARRAYS = ARRAY_NAMES[1:]
# unmap the pages of the maps once this process's file-backed RSS grew this much since the storage was opened: bounds
# the RSS. The kernel maps more than what is read (fault-around, whole large folios: measured up to 5x for random
# stacks), so the RSS is read (/proc/self/status) after every CHECK_MAPPED_BYTES read or written through the maps.
# Each unmapping costs page faults when the pages are read again: at 256 MB warm sampling of 84 px stacks from 100k
# transitions ran at 0.85x a memory buffer, at 1 GB 0.95x (benchmarks/bench_replay_storage.py, this machine)
DROP_MAPPINGS_BYTES = 1 << 30
CHECK_MAPPED_BYTES = 32 << 20
_OPEN: dict[str, weakref.ref] = {}  # storage directory -> the buffer of this process that has it open
_PICKLE_DIR: contextvars.ContextVar[str | None] = contextvars.ContextVar("replay_pickle_dir", default=None)


@contextlib.contextmanager
def pickle_directory(pickle_file: str | os.PathLike | object):
    """
    Within this context a disk buffer pickled to (or unpickled from) ``pickle_file`` refers to its storage by a path
    relative to the file's folder (see the module docstring). ``pickle_file`` that is not a path (an open file): no-op.
    """
    if not isinstance(pickle_file, (str, os.PathLike)):
        yield
        return
    token = _PICKLE_DIR.set(os.path.dirname(os.path.abspath(pickle_file)))
    try:
        yield
    finally:
        _PICKLE_DIR.reset(token)


def _rss_file() -> int | None:
    """:return: this process's file-backed resident bytes (Linux), None where unknown"""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssFile:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class ReplayStorageMixin:
    """Storage and persistence of :class:`~pvrw.drm.buffers.DrMReplayBuffer` (see the module docstring)."""

    def _array_specs(self) -> list[ArraySpec]:
        size, n_envs = self.buffer_size, self.n_envs
        action_dtype = np.dtype(self._maybe_cast_dtype(self.action_space.dtype)).str
        return [
            # env-major on disk: a stack's frames are adjacent in the file
            ArraySpec("frames", (self.frame_capacity, n_envs, *self.frame_shape), self.storage_dtype.str, 0, True),
            ArraySpec("obs_frame", (size, n_envs), np.dtype(np.int64).str, -1),
            ArraySpec("actions", (size, n_envs, self.action_dim), action_dtype),
            *(ArraySpec(name, (size, n_envs), np.dtype(np.float32).str) for name in ("rewards", "dones", "timeouts")),
        ]

    def _init_storage(self, storage: str, path: str | os.PathLike | None) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}.")
        if (storage == "disk") != (path is not None):
            raise ValueError("storage='disk' needs path=<a new directory>; path is only for storage='disk'.")
        self.storage, self.path, self._disk = storage, None if path is None else os.fspath(path), None
        if storage == "memory":
            for spec in self._array_specs():
                full = np.full if spec.fill else lambda shape, _fill, dtype: np.zeros(shape, dtype)
                setattr(self, spec.name, full(spec.shape, spec.fill, np.dtype(spec.dtype)))
            self._warn_if_space_short()  # disk: when the files are created (not by a model loaded for evaluation)

    def nbytes(self) -> int:
        """:return: bytes of the buffer's arrays at full capacity (in RAM, or on disk once written)"""
        return sum(spec.nbytes for spec in self._array_specs())

    def nbytes_holding(self, transitions: int) -> int:
        """
        :param transitions: transitions added per env (agent steps; capped at the capacity)
        :return: bytes of the arrays once they hold ``transitions``: what memory storage touches in RAM, or what disk
            storage allocates (in chunks of rows), episodes' first stacks included (the frame ring's slack, in
            proportion)
        """
        total = 0
        for spec in self._array_specs():
            if spec.name == "frames":
                rows = -(-transitions * spec.shape[0] // self.buffer_size)
            else:
                rows = spec.shape[0] if spec.fill else transitions  # a non-zero fill is written at creation
            if self.storage == "disk":
                rows = -(-rows // spec.chunk_rows) * spec.chunk_rows
            total += min(spec.shape[0], rows) * spec.row_bytes
        return total

    def _warn_if_space_short(self) -> None:
        if self.storage == "disk":
            existing = next(p for p in Path(os.path.abspath(self.path)).parents if p.exists())
            available, where = shutil.disk_usage(existing).free, f"free disk space at {existing}"
        elif psutil is not None:
            available, where = psutil.virtual_memory().available, "memory"
        else:  # pragma: no cover
            return
        if self.nbytes() > available:
            warnings.warn(
                f"The complete replay buffer needs {self.nbytes() / 1e9:.2f}GB > {available / 1e9:.2f}GB {where}"
                + (" (its files grow as transitions arrive)" if self.storage == "disk" else ""),
                stacklevel=4,
            )

    # ----------------------------------------------------------------------------------------- disk storage
    def __getattr__(self, name: str):
        # arrays of a disk buffer are created on first use (see the module docstring)
        if name in ARRAY_NAMES and self.__dict__.get("storage") == "disk":
            if self.__dict__.get("_closed"):
                raise StorageError(
                    f"This disk-backed replay buffer was closed (its storage {self.path} was closed or reopened); "
                    "use the buffer returned by DrMReplayBuffer.open / load_replay_buffer."
                )
            if not self.__dict__.get("space_checked"):
                self._warn_if_space_short()
            self._attach(DiskArrays.create(self.path, self._array_specs(), self._small_state()))
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _small_state(self) -> bytes:
        skip = (*ARRAY_NAMES, "_disk", "_closed")
        return pickle.dumps({k: v for k, v in self.__dict__.items() if k not in skip}, pickle.HIGHEST_PROTOCOL)

    def _attach(self, disk: DiskArrays) -> None:
        key = os.path.realpath(disk.path)
        _OPEN[key] = weakref.ref(self)
        self._disk, self._closed, self._mapped_bytes, self._rss_file_base = disk, False, 0, _rss_file()
        self.__dict__.update(disk.arrays)

    def _open_storage(self, path: str | os.PathLike, generation: int | None, token: str | None = None) -> None:
        holder = _OPEN.get(os.path.realpath(path), lambda: None)()
        if holder is not None:
            holder.close()  # this process reopens the storage at a checkpoint: the old buffer's view is discarded
        disk, state = DiskArrays.open(path, generation, token)
        self.__dict__.update(pickle.loads(state))
        self.path = os.fspath(path)
        self._attach(disk)

    @classmethod
    def open(cls, path: str | os.PathLike, generation: int | None = None, device: th.device | str | None = None):
        """
        Reopen a disk-backed buffer at one of its kept checkpoints, without reading its data. Rows written after that
        checkpoint are undone. A buffer of this process that has the storage open is closed.

        :param path: the storage directory
        :param generation: checkpoint number (as returned by :meth:`checkpoint`); None: the newest
        :param device: PyTorch device of the sampled tensors; None: the one it was saved with
        :return: the buffer
        """
        buffer = cls.__new__(cls)
        buffer._open_storage(path, generation)
        if device is not None:
            buffer.device = get_device(device)
        return buffer

    def checkpoint(self) -> int:
        """
        Make everything stored so far durable (disk storage): flush the rows written since the previous checkpoint
        and write the small state atomically. A process killed at any moment reopens at the newest checkpoint.

        :return: the checkpoint number, for :meth:`open`
        """
        if self.storage != "disk":
            raise TypeError("checkpoint() is for storage='disk'; save a memory buffer with save_replay_buffer (pickle).")
        if self._disk is None:
            self.__getattr__("frames")  # create the storage
        return self._disk.commit(self._small_state())

    def close(self) -> None:
        """Release the storage of a disk-backed buffer (rows written after its last checkpoint are not kept)."""
        if self.__dict__.get("_disk") is None:
            return
        for name in ARRAY_NAMES:
            self.__dict__.pop(name, None)
        self._disk.close()
        self._disk, self._closed = None, True

    def _before_add(self) -> None:
        """Journal the rows :meth:`add` may write (disk storage)."""
        if self.storage != "disk":
            return
        if self._disk is None:
            self.__getattr__("frames")
        rows = (self.frames_written[:, None] + np.arange(self.frame_stack + 1)) % self.frame_capacity
        self._disk.before_write("frames", rows)
        for name in TRANSITION_ARRAYS:
            self._disk.before_write(name, self.pos)
        self._count_mapped(self._disk.specs["frames"].row_bytes)

    def _before_fill(self, name: str) -> None:
        """Journal a whole array about to be overwritten (disk storage)."""
        if self.storage == "disk":
            getattr(self, name)
            self._disk.before_write(name)

    def _gather_frames(self, first: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        """:return: ``(B, frame_stack, *frame_shape)`` frames from absolute indices ``first`` of each env"""
        ring = (first[:, None] + np.arange(self.frame_stack)) % self.frame_capacity
        frames = self.frames[ring, env_indices[:, None]]
        if self.__dict__.get("_disk") is not None:
            self._count_mapped(frames.nbytes)
        return frames

    def _count_mapped(self, nbytes: int) -> None:
        # pages read or written through the maps stay in this process's RSS until unmapped (not evicted: they stay in
        # the page cache); unmap them once they pass DROP_MAPPINGS_BYTES (each CHECK_MAPPED_BYTES if the RSS is unknown)
        self._mapped_bytes += nbytes
        if self._mapped_bytes < CHECK_MAPPED_BYTES:
            return
        self._mapped_bytes = 0
        rss, base = _rss_file(), self.__dict__.get("_rss_file_base")
        if rss is None or base is None or rss - base > DROP_MAPPINGS_BYTES:
            self._disk.drop_mappings()

    # ------------------------------------------------------------------------------------------------ pickle
    def _filled_rows(self, name: str) -> int:
        if name == "frames":
            return int(min(self.frame_capacity, self.frames_written.max(initial=0)))
        return self.buffer_size if self.full else self.pos

    def __getstate__(self) -> dict:
        if self.storage == "disk":  # a checkpoint, and a reference to it
            generation = self.checkpoint()
            ref = {"path": os.path.abspath(self.path), "generation": generation, "token": self._disk.token}
            base = _PICKLE_DIR.get()
            if base is not None:
                ref["relative_path"] = os.path.relpath(os.path.abspath(self.path), base)
            return {"_replay_storage_ref": ref}
        state = self.__dict__.copy()
        fills = {spec.name: spec.fill for spec in self._array_specs()}
        state["_filled_part"] = {name: (state[name].shape, fills[name]) for name in ARRAY_NAMES}
        for name in ARRAY_NAMES:
            state[name] = state[name][: self._filled_rows(name)]
        return state

    def __setstate__(self, state: dict) -> None:
        ref = state.get("_replay_storage_ref")
        if ref is not None:
            base = _PICKLE_DIR.get()
            if base is not None and ref.get("relative_path") is not None:  # the storage beside the pickle, wherever
                ref = {**ref, "path": os.path.normpath(os.path.join(base, ref["relative_path"]))}
            try:
                self._open_storage(ref["path"], ref["generation"], ref["token"])
            except StorageError as error:
                raise StorageError(
                    f"{error} This pickle refers to checkpoint {ref['generation']} of the disk-backed replay buffer "
                    f"in {ref['path']}; if that directory moved, open it with "
                    f"DrMReplayBuffer.open(<new path>, generation={ref['generation']})."
                ) from error
            return
        for name, (shape, fill) in state.pop("_filled_part", {}).items():  # absent in pickles of whole arrays
            part = state[name]
            full = np.full(shape, fill, part.dtype) if fill else np.zeros(shape, part.dtype)
            full[: len(part)] = part
            state[name] = full
        state.setdefault("storage", "memory")
        state.setdefault("path", None)
        state.setdefault("_disk", None)
        self.__dict__.update(state)

    # ------------------------------------------------------------------------------- SB3 compatibility views
    def _stacked_view(self, offset: int) -> np.ndarray:
        out = np.zeros((self.buffer_size, self.n_envs, *self.obs_shape), dtype=self.observation_space.dtype)
        slots, envs = np.nonzero(self.obs_frame >= 0)
        newest = self.obs_frame[slots, envs] + offset
        alive = newest - self.frame_stack + 1 >= self.frames_written[envs] - self.frame_capacity
        out[slots[alive], envs[alive]] = self._stack(newest[alive], envs[alive])
        return out

    @property  # type: ignore[override]
    def observations(self) -> np.ndarray:
        """
        Stacked ``obs`` of every slot, ``(buffer_size, n_envs, *obs_shape)``, zeros where not stored (or frames
        overwritten). A full copy at SB3's memory cost: for inspection and code written for ``ReplayBuffer``.
        """
        return self._stacked_view(0)

    @property  # type: ignore[override]
    def next_observations(self) -> np.ndarray:
        """One-step ``next_obs`` of every slot (the terminal observation at episode ends); see :attr:`observations`."""
        return self._stacked_view(1)
