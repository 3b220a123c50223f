"""The run directory: where each artefact of a run lives, atomic writes, and the per-run status file.

::

    RUN_DIR/
      config.yaml        resolved configuration (what `pvrw train --config` would re-create)
      status.json        state of the run (see RunStatus); the only file a sweep backend needs to read
      metrics.csv        one row per training episode and per evaluation (append-only)
      tb/                TensorBoard events
      checkpoints/       latest.json -> frame_<frames>/{model.zip, replay_buffer.pkl, state.pkl, checkpoint.json}
      replay/            the replay buffer's memory-mapped files (replay_storage: disk; see pvrw.drm.replay_disk)
      videos/            evaluation videos
      plot.png           learning curves, written at the end of training
      eval.json          the last `pvrw eval` result
      .pvrw.lock         who uses the directory now (see pvrw.runs.lock)

pvrw writes only into a new or empty directory or one that holds a run (its ``status.json``), and deletes only the
files above (videos: those it names ``eval_*.mp4``), never a file it did not write (:func:`check_run_dir`,
:func:`remove_run_files`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# run states, in the order a run goes through them
PENDING, RUNNING, FINISHED, FAILED = "pending", "running", "finished", "failed"
STATES = (PENDING, RUNNING, FINISHED, FAILED)

LOCK_FILE = ".pvrw.lock"
#: what pvrw writes at the top of a run directory, besides the lock and its videos (see :func:`is_pvrw_video`)
RUN_FILES: tuple[str, ...] = (
    "config.yaml", "status.json", "metrics.csv", "plot.png", "eval.json", "tb", "checkpoints", "replay"
)  # fmt: skip
#: the videos pvrw writes (training evaluations, `pvrw eval`), and their temporary names
_VIDEO = re.compile(r"^(eval(_cli)?_\d+\.(mp4|gif)|\.eval(_cli)?_\d+\.tmp\.(mp4|gif))$")
#: the temporary files of atomic_write_* (a kill can leave one)
_TMP = re.compile(r"^\.(" + "|".join(re.escape(n) for n in RUN_FILES) + r")\..+\.tmp$")
#: a replay storage being created (pvrw.drm.replay_disk), left behind by a kill
_CREATING = re.compile(r"^\.replay\.creating-\d+$")


class RunDirError(RuntimeError):
    """A directory cannot be used as a run directory as asked (the message says why and what to do)."""


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, racing other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a kill) never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; a run file is shared like any other file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class RunDir:
    """Paths of one run directory (nothing is created until asked)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    status = property(lambda self: self.root / "status.json")
    metrics = property(lambda self: self.root / "metrics.csv")
    tensorboard = property(lambda self: self.root / "tb")
    checkpoints = property(lambda self: self.root / "checkpoints")
    replay = property(lambda self: self.root / "replay")
    latest = property(lambda self: self.root / "checkpoints" / "latest.json")
    videos = property(lambda self: self.root / "videos")
    plot = property(lambda self: self.root / "plot.png")
    eval_result = property(lambda self: self.root / "eval.json")

    def exists(self) -> bool:
        return self.config.is_file()

    def holds_run(self) -> bool:
        """Whether pvrw has started a run here (its ``status.json``; ``config.yaml`` follows once set up)."""
        try:
            data = json.loads(self.status.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get("state") in STATES

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"


@dataclass
class RunStatus:
    """Contents of ``status.json``. Written atomically at each state change and each checkpoint.

    A backend (the local queue, Ray) decides what to do with a run from this file alone: ``finished`` runs
    are skipped, anything else is (re)started with ``run_training`` which resumes from the last checkpoint.
    A ``running`` state whose process is gone (killed) is just an unfinished run.
    """

    state: str = PENDING
    frames: int = 0
    """environment frames done at the last checkpoint (what a resume starts from)"""
    total_frames: int = 0
    checkpoint: str | None = None
    """checkpoint directory relative to the run directory"""
    wall_time: float = 0.0
    """seconds of training up to the last checkpoint, summed over resumes"""
    attempts: int = 0
    """times training was started on this run directory"""
    error: str | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    updated: float = field(default_factory=time.time)

    @classmethod
    def read(cls, run_dir: RunDir | str | os.PathLike) -> RunStatus:
        run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        if not run_dir.status.is_file():
            return cls()
        data = json.loads(run_dir.status.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def write(self, run_dir: RunDir | str | os.PathLike) -> None:
        run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.host, self.pid, self.updated = socket.gethostname(), os.getpid(), time.time()
        atomic_write_json(run_dir.status, asdict(self))

    @property
    def finished(self) -> bool:
        return self.state == FINISHED


def is_pvrw_video(path: Path) -> bool:
    """Whether a file under ``videos/`` is one pvrw wrote (by its name: ``eval_<frames>.mp4``,
    ``eval_cli_<frames>.mp4``)."""
    return bool(_VIDEO.match(path.name))


def _listing(root: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if p.name != LOCK_FILE)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_run_dir(run_dir: RunDir | str | os.PathLike) -> None:
    """Refuse a directory that is not empty and holds no pvrw run: pvrw would write over the files found there.

    :raises RunDirError: naming a few of the files found.
    """
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not rd.root.is_dir() or rd.holds_run():
        return
    if any(p.name != LOCK_FILE for p in rd.root.iterdir()):
        raise RunDirError(
            f"{rd.root} is not empty and holds no pvrw run (found {_listing(rd.root)}); pvrw writes runs only into "
            "a new or empty directory: choose another --out (or move those files)"
        )


def remove_run_files(run_dir: RunDir | str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete what pvrw wrote in a run directory, and nothing else (not the lock, not a file of the user's).

    :param names: entries to delete among :data:`RUN_FILES` and ``"videos"`` (only pvrw's videos; the folder if it
        is then empty); default: all of them, and left-over temporary files of atomic writes.
    :return: the paths deleted.
    """
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    everything = names is None
    names = (*RUN_FILES, "videos") if names is None else tuple(names)
    unknown = set(names) - {*RUN_FILES, "videos"}
    if unknown:
        raise ValueError(f"not pvrw run files: {sorted(unknown)}")
    targets = [rd.root / n for n in names if n != "videos"]
    if "videos" in names and rd.videos.is_dir():
        targets += [p for p in rd.videos.iterdir() if p.is_file() and is_pvrw_video(p)]
    if everything and rd.root.is_dir():
        targets += [p for p in rd.root.iterdir() if _TMP.match(p.name) or _CREATING.match(p.name)]
    removed = []
    for path in targets:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
    if "videos" in names and rd.videos.is_dir() and not any(rd.videos.iterdir()):
        rd.videos.rmdir()
    return removed
