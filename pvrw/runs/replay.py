"""A run's replay buffer: where it lives (``replay_storage``) and whether this machine can hold it.

With ``replay_storage: disk`` (the default of runs) pvrw's :class:`~pvrw.drm.buffers.DrMReplayBuffer` keeps its
arrays in ``RUN_DIR/replay/`` (memory-mapped files, :mod:`pvrw.drm.replay_disk`). A run checkpoint then checkpoints
the storage (the rows added since the previous one) and its ``replay_buffer.pkl`` is a reference to that storage
checkpoint, by a path relative to the checkpoint folder: a run directory that moved, or that a Ray trial restarted on
another node mounts elsewhere, reopens its own storage. The storage keeps its two newest checkpoints, so a resume
from the run checkpoint before the newest one (a kill between the two commits, a damaged newest checkpoint) reopens
the older one, undoing the rows written after it.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path
from typing import Any

from gymnasium import spaces

from pvrw.runs.config import RunConfig
from pvrw.runs.layout import RunDir

#: the buffer's own warning about its full capacity, replaced in runs by :func:`check_replay_space`
_CAPACITY_WARNING = "The complete replay buffer needs"


class ReplaySpaceError(RuntimeError):
    """The disk cannot hold the replay buffer of a run (one line: what is needed, what is free, what to do)."""


def _drm_buffer_class() -> type:
    from pvrw.drm.buffers import DrMReplayBuffer

    return DrMReplayBuffer


def add_replay_storage(kwargs: dict[str, Any], config: RunConfig, observation_space: Any, run_dir: RunDir) -> None:
    """Put ``config.replay_storage`` (and the run's ``replay/`` folder) into the constructor ``kwargs`` of a model
    whose replay buffer is a :class:`~pvrw.drm.buffers.DrMReplayBuffer`; other buffers are left as they are (memory).
    A ``storage`` the user put in ``replay_buffer_kwargs`` wins."""
    buffer_class = kwargs.get("replay_buffer_class")
    if buffer_class is None:  # DrM picks DrMReplayBuffer for Box observations (see DrM._setup_model)
        drm_buffer = config.algo == "drm" and not isinstance(observation_space, spaces.Dict)
    else:
        drm_buffer = isinstance(buffer_class, type) and issubclass(buffer_class, _drm_buffer_class())
    if not drm_buffer:
        return
    buffer_kwargs = dict(kwargs.get("replay_buffer_kwargs") or {})
    buffer_kwargs.setdefault("storage", config.replay_storage)
    if buffer_kwargs["storage"] == "disk":
        buffer_kwargs.setdefault("path", str(run_dir.replay))
    kwargs["replay_buffer_kwargs"] = buffer_kwargs


def adopt_replay_dir(model: Any, run_dir: RunDir) -> None:
    """After loading a checkpoint: a disk buffer's storage is the run's ``replay/`` wherever the run directory is now
    (the model's saved ``replay_buffer_kwargs`` hold the path it had when saved)."""
    buffer_kwargs = getattr(model, "replay_buffer_kwargs", None)
    if isinstance(buffer_kwargs, dict) and buffer_kwargs.get("storage") == "disk":
        buffer_kwargs["path"] = str(run_dir.replay)
    buffer = getattr(model, "replay_buffer", None)
    if getattr(buffer, "storage", None) == "disk" and buffer.__dict__.get("_disk") is None:
        buffer.path = str(run_dir.replay)  # a new buffer (the checkpoint has none): its files not created yet


def forget_replay(run_dir: RunDir) -> None:
    """Delete the run's replay storage: a run that starts without a saved buffer starts a new one there."""
    from pvrw.runs.layout import remove_run_files

    remove_run_files(run_dir, ("replay",))


def close_replay(model: Any) -> None:
    """Release a disk buffer's storage when its run ends (its lock and maps; rows after its last checkpoint, if any,
    are undone at the next open, as after a kill), so that a process running many runs does not hold them all."""
    buffer = getattr(model, "replay_buffer", None)
    if getattr(buffer, "storage", None) == "disk":
        buffer.close()


@contextlib.contextmanager
def run_space_checked():
    """Build or load a run's model within this: the buffer's warning about its full capacity is left out, since
    :func:`check_replay_space` checks what the run will store."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CAPACITY_WARNING)
        yield


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def _allocated_bytes(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(p.stat().st_blocks * 512 for p in path.iterdir() if p.is_file())


def available_memory() -> int | None:
    """Bytes of RAM available to a new process (``MemAvailable``; psutil's figure where installed), None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def replay_bytes_needed(buffer: Any, config: RunConfig) -> int:
    """
    :return: bytes ``buffer`` takes once it holds what a run of ``config`` stores (its capacity at most); for disk
        storage, plus the undo journals of two checkpoint intervals once the ring wraps (rows overwritten since the
        previous checkpoint are kept until the next one)
    """
    steps = -(-config.total_timesteps // buffer.n_envs)
    need = buffer.nbytes_holding(min(buffer.buffer_size, steps))
    if buffer.storage == "disk" and steps > buffer.buffer_size:
        interval = -(-config.checkpoint_every // config.frames_per_step // buffer.n_envs) or steps
        need += 2 * buffer.nbytes_holding(min(buffer.buffer_size, interval))
    return need


def check_replay_space(model: Any, config: RunConfig, run_dir: RunDir) -> None:
    """Before training: will the replay buffer of ``model`` fit? Disk storage: :class:`ReplaySpaceError` if the free
    space of the run's disk cannot take what the run will store (a full disk mid-run stops it). Memory storage: a
    warning if the available RAM cannot (the kernel may still find room: swap, memory freed by others)."""
    buffer = getattr(model, "replay_buffer", None)
    if not hasattr(buffer, "nbytes_holding"):
        return
    buffer.space_checked = True  # the buffer's own warning about its full capacity is left out
    need = replay_bytes_needed(buffer, config)
    held = min(buffer.buffer_size, -(-config.total_timesteps // buffer.n_envs)) * buffer.n_envs
    what = f"{_size(need)} for the {held:,} transitions this run stores"
    if buffer.storage == "disk":
        storage = Path(buffer.path)
        free = shutil.disk_usage(next(p for p in (storage, *storage.parents) if p.exists())).free
        missing = need - _allocated_bytes(storage)
        if missing > free:
            raise ReplaySpaceError(
                f"{run_dir.root}: the replay buffer needs {what} in {storage}, and its disk has {_size(free)} free;"
                " free some space, lower buffer_size or frames, or train with --replay-storage memory"
            )
        return
    available = available_memory()
    if available is not None and need > available:
        warnings.warn(
            f"{run_dir.root}: the replay buffer needs {what} in RAM, and {_size(available)} is available; "
            "lower buffer_size, or train with --replay-storage disk",
            stacklevel=2,
        )
