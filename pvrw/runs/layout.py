"""The run directory: where each artefact of a run lives, atomic writes, and the per-run status file.

::

    RUN_DIR/
      config.yaml        resolved configuration (what `pvrw train --config` would re-create)
      status.json        state of the run (see RunStatus); the only file a sweep backend needs to read
      metrics.csv        one row per training episode and per evaluation (append-only)
      tb/                TensorBoard events
      checkpoints/       latest.json -> frame_<frames>/{model.zip, replay_buffer.pkl, state.pkl, checkpoint.json}
      videos/            evaluation videos
      plot.png           learning curves, written at the end of training
      eval.json          the last `pvrw eval` result
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# run states, in the order a run goes through them
PENDING, RUNNING, FINISHED, FAILED = "pending", "running", "finished", "failed"
STATES = (PENDING, RUNNING, FINISHED, FAILED)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a kill) never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    latest = property(lambda self: self.root / "checkpoints" / "latest.json")
    videos = property(lambda self: self.root / "videos")
    plot = property(lambda self: self.root / "plot.png")
    eval_result = property(lambda self: self.root / "eval.json")

    def exists(self) -> bool:
        return self.config.is_file()

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
