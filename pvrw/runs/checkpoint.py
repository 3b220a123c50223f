"""Atomic checkpoints of a model and its replay buffer, and loading the latest one.

A checkpoint is a directory ``checkpoints/step_<agent steps>/`` with ``model.zip`` and ``replay_buffer.pkl``. It is
written under a temporary name and renamed into place, and only then does ``checkpoints/latest.json`` (itself
replaced atomically) point at it; older checkpoints are deleted last. A kill at any moment therefore leaves
``latest.json`` naming a complete checkpoint (or no checkpoint at all).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from typing import Any

from pvrw._diskspace import DiskFullError, disk_full_errno, format_bytes, free_bytes, release_frames, tree_bytes
from pvrw.runs.layout import RunDir, atomic_write_json

MODEL_FILE = "model.zip"
BUFFER_FILE = "replay_buffer.pkl"


@dataclass
class CheckpointInfo:
    """What ``latest.json`` records about the newest checkpoint."""

    dir: str
    """checkpoint directory, relative to ``checkpoints/``"""
    steps: int
    """agent steps (SB3's num_timesteps) at the checkpoint"""
    frames: int
    episodes: int
    """training episodes finished at the checkpoint"""
    wall_time: float
    """seconds of training at the checkpoint, summed over resumes"""
    has_replay_buffer: bool


def save_checkpoint(
    model: Any,
    run_dir: RunDir,
    *,
    frames: int,
    episodes: int,
    wall_time: float,
    save_replay_buffer: bool = True,
    keep: int = 1,
) -> CheckpointInfo:
    """Save ``model`` (and its replay buffer) as the run's newest checkpoint; keep the newest ``keep`` of them."""
    name = f"step_{model.num_timesteps:010d}"
    final = run_dir.checkpoints / name
    tmp = run_dir.checkpoints / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    has_buffer = bool(save_replay_buffer and getattr(model, "replay_buffer", None) is not None)
    try:
        tmp.mkdir(parents=True)
        model.save(tmp / MODEL_FILE)
        if has_buffer:
            model.save_replay_buffer(tmp / BUFFER_FILE)
    except BaseException as err:
        release_frames(err)  # closes the files the failed write left open, so that removing them frees their space
        written = tree_bytes(tmp)
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint would only keep the disk full
        code = disk_full_errno(err)
        if code is None:
            raise
        raise DiskFullError(
            f"disk full: could not write checkpoint {name} in {run_dir.checkpoints} (removed again after"
            f" {format_bytes(written)}; {format_bytes(free_bytes(tmp))} are free)",
            code,
            what=f"the checkpoint at frame {frames:,}",
            written=written,
        ) from err
    shutil.rmtree(final, ignore_errors=True)  # a checkpoint of the same step from an earlier attempt
    tmp.rename(final)
    info = CheckpointInfo(
        dir=name,
        steps=int(model.num_timesteps),
        frames=int(frames),
        episodes=int(episodes),
        wall_time=float(wall_time),
        has_replay_buffer=has_buffer,
    )
    atomic_write_json(run_dir.latest, asdict(info))
    if keep > 0:
        older = sorted(p for p in run_dir.checkpoints.glob("step_*") if p.is_dir() and p.name != name)
        for path in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(path, ignore_errors=True)
    return info


def latest_checkpoint(run_dir: RunDir) -> CheckpointInfo | None:
    """The newest complete checkpoint of a run, or ``None``."""
    if not run_dir.latest.is_file():
        return None
    info = CheckpointInfo(**json.loads(run_dir.latest.read_text()))
    if not (run_dir.checkpoints / info.dir / MODEL_FILE).is_file():
        return None
    return info


def load_checkpoint(algo_class: type, run_dir: RunDir, env: Any, device: str = "auto", with_buffer: bool = True):
    """Load the newest checkpoint's model (and replay buffer) onto ``env``; return ``(model, info)``.

    :raises FileNotFoundError: if the run has no checkpoint.
    """
    info = latest_checkpoint(run_dir)
    if info is None:
        raise FileNotFoundError(f"{run_dir.root} has no checkpoint (checkpoints/latest.json)")
    path = run_dir.checkpoints / info.dir
    model = algo_class.load(path / MODEL_FILE, env=env, device=device)
    if with_buffer and info.has_replay_buffer:
        model.load_replay_buffer(path / BUFFER_FILE)
    return model, info
