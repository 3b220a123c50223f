"""Crash-proof checkpoints of a run, and finding the newest complete one.

A checkpoint is a directory ``checkpoints/frame_<frames>/`` with ``model.zip``, ``replay_buffer.pkl``, ``state.pkl``
(random and rollout state, see :mod:`pvrw.runs.rng_state`) and ``checkpoint.json`` (what it holds, with the size of
each file), written last. It is written under a temporary name, synced, renamed into place, and only then does
``checkpoints/latest.json`` (itself replaced atomically) name it; the previous checkpoint is deleted after that, and
no checkpoint directory is ever replaced in place. A kill at any moment therefore leaves ``latest.json`` naming a
complete checkpoint. One that is missing or damaged anyway (a disk fault, a file cut) is passed over for the newest
complete checkpoint on disk, or refused (:class:`CheckpointError`): a run never restarts silently from frame 0.
Runs written before checkpoints counted frames have ``step_<agent steps>/`` directories; they are read the same way.

A replay buffer on disk (``replay_storage: disk``, :mod:`pvrw.runs.replay`) is checkpointed in its own folder first;
``replay_buffer.pkl`` refers to that buffer checkpoint by a path relative to the checkpoint, and ``checkpoint.json``
records it, so a checkpoint whose buffer checkpoint is gone is passed over like a damaged one.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pvrw._diskspace import DiskFullError, disk_full_errno, format_bytes, free_bytes, release_frames, tree_bytes
from pvrw.runs.faults import kill_point
from pvrw.runs.layout import RunDir, atomic_write_json

MODEL_FILE = "model.zip"
BUFFER_FILE = "replay_buffer.pkl"
STATE_FILE = "state.pkl"
INFO_FILE = "checkpoint.json"
_NAME = re.compile(r"^(frame|step)_(\d+)(?:_(\d+))?$")


class CheckpointError(FileNotFoundError):
    """A run's checkpoints are missing or damaged and none can be resumed from; the message says what to do."""


@dataclass
class CheckpointInfo:
    """What ``latest.json`` (and each checkpoint's ``checkpoint.json``) records about a checkpoint."""

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
    metrics_rows: int | None = None
    """rows of metrics.csv written before the checkpoint (a resume cuts the file back to them)"""
    last_eval_frames: int | None = None
    """frames of the last evaluation in those rows (a resume does not evaluate at that frame again)"""
    has_state: bool = False
    """whether ``state.pkl`` (random and rollout state) is there"""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointInfo:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk (so a power loss cannot leave a renamed but empty checkpoint)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some filesystems (FUSE, network) cannot sync a directory; its files are synced
            raise
    finally:
        os.close(fd)


def _free_name(run_dir: RunDir, frames: int) -> str:
    """``frame_<frames>``, with a suffix if a directory has that name: a checkpoint is never replaced in place, since
    it may be the live one (a leftover that was never committed is deleted once the new checkpoint is)."""
    name, n = f"frame_{frames:010d}", 0
    while (run_dir.checkpoints / name).exists():
        n += 1
        name = f"frame_{frames:010d}_{n}"
    return name


def save_checkpoint(
    model: Any,
    run_dir: RunDir,
    *,
    frames: int,
    episodes: int,
    wall_time: float,
    save_replay_buffer: bool = True,
    keep: int = 1,
    metrics_rows: int | None = None,
    last_eval_frames: int | None = None,
    state: dict[str, Any] | None = None,
) -> CheckpointInfo:
    """Save ``model`` (its replay buffer, ``state``) as the run's newest checkpoint; keep the newest ``keep`` of them.

    :param metrics_rows: rows of ``metrics.csv`` written so far.
    :param last_eval_frames: frames of the last evaluation written to ``metrics.csv``.
    :param state: the random and rollout state (:func:`pvrw.runs.rng_state.capture_run_state`), saved as ``state.pkl``.
    """
    name = _free_name(run_dir, frames)
    final = run_dir.checkpoints / name
    tmp = run_dir.checkpoints / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    has_buffer = bool(save_replay_buffer and getattr(model, "replay_buffer", None) is not None)
    replay = None  # where a disk buffer's checkpoint is, relative to the run
    info = CheckpointInfo(
        dir=name,
        steps=int(model.num_timesteps),
        frames=int(frames),
        episodes=int(episodes),
        wall_time=float(wall_time),
        has_replay_buffer=has_buffer,
        metrics_rows=metrics_rows,
        last_eval_frames=last_eval_frames,
        has_state=state is not None,
    )
    try:
        tmp.mkdir(parents=True)
        model.save(tmp / MODEL_FILE)
        if has_buffer:
            from pvrw.drm.replay_storage import pickle_directory

            with pickle_directory(tmp / BUFFER_FILE):  # a disk buffer: checkpointed, referred to relative to the run
                model.save_replay_buffer(tmp / BUFFER_FILE)
            replay = _replay_reference(model.replay_buffer, run_dir)
        if state is not None:
            with open(tmp / STATE_FILE, "wb") as f:
                pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        for path in tmp.iterdir():
            _fsync(path)
        atomic_write_json(tmp / INFO_FILE, {**asdict(info), "files": sizes, **({"replay": replay} if replay else {})})
        _fsync(tmp)
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
    kill_point("checkpoint-files", frames)
    tmp.rename(final)
    _fsync(run_dir.checkpoints)
    kill_point("checkpoint-renamed", frames)
    atomic_write_json(run_dir.latest, asdict(info))
    kill_point("checkpoint-committed", frames)
    _remove_old(run_dir, info, keep)
    return info


def _replay_reference(buffer: Any, run_dir: RunDir) -> dict[str, Any] | None:
    """The storage checkpoint a disk buffer's pickle refers to: its folder (relative to the run), number and token."""
    disk = getattr(buffer, "_disk", None)
    if getattr(buffer, "storage", None) != "disk" or disk is None:
        return None
    where = os.path.relpath(os.path.abspath(buffer.path), os.path.abspath(run_dir.root))
    return {"dir": where, "generation": disk.generation, "token": disk.token}


def _remove_old(run_dir: RunDir, live: CheckpointInfo, keep: int) -> None:
    """Delete leftover temporary directories, and the checkpoints beyond the newest ``keep`` (never the live one).

    A checkpoint newer than the live one was never committed (its run was killed before latest.json named it).
    """
    for path in run_dir.checkpoints.glob(".*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
    if keep <= 0:
        return
    older = []
    for path in run_dir.checkpoints.iterdir():
        if not path.is_dir() or path.name == live.dir or not _NAME.match(path.name):
            continue
        info = _dir_info(path)
        if info is not None and info.frames < live.frames:
            older.append((info.frames, path))
        elif info is None or info.frames >= live.frames:
            shutil.rmtree(path, ignore_errors=True)
    older.sort()
    for _, path in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)


def _read_latest(run_dir: RunDir) -> CheckpointInfo | None:
    try:
        return CheckpointInfo.from_dict(json.loads(run_dir.latest.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _dir_info(path: Path) -> CheckpointInfo | None:
    """A checkpoint directory's own record (``None`` for a directory written before checkpoints had one)."""
    try:
        data = json.loads((path / INFO_FILE).read_text())
        return CheckpointInfo.from_dict({**data, "dir": path.name})
    except (OSError, ValueError, TypeError):
        return None


def checkpoint_problem(run_dir: RunDir, info: CheckpointInfo) -> str | None:
    """Why the checkpoint ``info`` names cannot be resumed from (missing, cut or damaged files), or ``None``."""
    path = run_dir.checkpoints / info.dir
    if not path.is_dir():
        return "missing"
    try:
        recorded = json.loads((path / INFO_FILE).read_text())
        sizes, replay = recorded["files"], recorded.get("replay")
    except FileNotFoundError:
        sizes, replay = {}, None  # written before checkpoints recorded their files: check model.zip only
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"damaged ({INFO_FILE} is unreadable)"
    for name, size in sizes.items():
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            return f"damaged ({name} is missing)" if actual is None else f"damaged ({name}: {actual} of {size} bytes)"
    if info.has_replay_buffer and not (path / BUFFER_FILE).is_file():
        return f"damaged ({BUFFER_FILE} is missing)"
    if info.has_replay_buffer and replay:
        from pvrw.drm.replay_disk import holds_checkpoint

        if not holds_checkpoint(run_dir.root / replay["dir"], replay["generation"], replay.get("token")):
            return f"stale (its replay buffer, checkpoint {replay['generation']} of {replay['dir']}/, is gone)"
    try:
        with zipfile.ZipFile(path / MODEL_FILE) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        return f"damaged ({MODEL_FILE} is missing)"
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        return f"damaged ({MODEL_FILE} is not a readable zip file: {err})"
    return None if bad is None else f"damaged ({MODEL_FILE}: {bad} is corrupt)"


def latest_checkpoint(run_dir: RunDir) -> CheckpointInfo | None:
    """The checkpoint to resume from: the one ``latest.json`` names, else the newest complete one on disk.

    Falling back says so (a warning). ``None`` only when the run has no checkpoint at all.

    :raises CheckpointError: when ``latest.json`` exists but neither it nor any other checkpoint can be resumed from.
    """
    named = _read_latest(run_dir)
    problem = None
    if named is not None:
        problem = checkpoint_problem(run_dir, named)
        if problem is None:
            return named
    elif run_dir.latest.exists():
        problem = "unreadable"
    candidates = []
    if run_dir.checkpoints.is_dir():
        for path in run_dir.checkpoints.iterdir():
            info = _dir_info(path) if path.is_dir() and _NAME.match(path.name) else None
            if info is not None and checkpoint_problem(run_dir, info) is None:
                candidates.append(info)
    what = f"checkpoints/latest.json names {named.dir}, which is" if named else "checkpoints/latest.json is"
    if candidates:
        best = max(candidates, key=lambda c: (c.frames, c.dir))
        if problem is not None:
            warnings.warn(f"{run_dir.root}: {what} {problem}; resuming from {best.dir}, the newest complete checkpoint",
                          stacklevel=2)  # fmt: skip
        return best
    if problem is None:
        return None
    raise CheckpointError(
        f"{run_dir.root}: {what} {problem}, and no other complete checkpoint is there; restore the checkpoints/ "
        "folder from a backup, or train again in another --out directory (this one keeps its metrics.csv)"
    )


def load_checkpoint(
    algo_class: type,
    run_dir: RunDir,
    env: Any,
    device: str = "auto",
    with_buffer: bool = True,
    info: CheckpointInfo | None = None,
):
    """Load a checkpoint's model (and replay buffer) onto ``env``; return ``(model, info)``.

    :param info: the checkpoint (default: :func:`latest_checkpoint`).
    :raises FileNotFoundError: if the run has no checkpoint.
    """
    info = info or latest_checkpoint(run_dir)
    if info is None:
        raise FileNotFoundError(f"{run_dir.root} has no checkpoint (checkpoints/latest.json)")
    from pvrw.drm.saved import check_model_zip, load_replay_buffer_file

    path = run_dir.checkpoints / info.dir
    model = algo_class.load(check_model_zip(path / MODEL_FILE, algo_class), env=env, device=device)
    if with_buffer and info.has_replay_buffer:
        load_replay_buffer_file(path / BUFFER_FILE, model.load_replay_buffer)  # any algorithm: damaged = one line
    return model, info


def load_checkpoint_state(run_dir: RunDir, info: CheckpointInfo) -> dict[str, Any] | None:
    """The checkpoint's ``state.pkl`` (``None`` for a checkpoint written without one)."""
    if not info.has_state:
        return None
    with open(run_dir.checkpoints / info.dir / STATE_FILE, "rb") as f:
        return pickle.load(f)
