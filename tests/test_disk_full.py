"""Full disks and cut-off files: one-line errors, nothing committed lost, no crash, no hang (all in subprocesses)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_feature_cache import spec
from test_feature_cache_recording import record_tiny

from pvrw._diskspace import DiskFullError
from pvrw.feature_cache import EpisodeDataset, FeatureStore
from pvrw.runs.layout import RunDir, RunStatus
from pvrw.runs.metrics import read_metrics

TESTS = Path(__file__).parent
PVRW = [sys.executable, "-c", "from pvrw.cli import main; main()"]


def run_pvrw(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``pvrw ARGS`` in a subprocess (a crash is an exit code, a hang a TimeoutExpired, not a dead pytest)."""
    return subprocess.run([*PVRW, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(kib)``: a tmpfs of that size under ``tmp_path``, unmounted afterwards; skips where none can be made.

    ``small_disk.resize(where, kib)`` grows it (freeing space without touching the files on it).
    """
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        if shutil.which("mount") is None or os.geteuid() != 0:
            pytest.skip("filling a disk for real needs a small tmpfs, and mounting one needs root (CAP_SYS_ADMIN)")
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)], capture_output=True)
        if out.returncode:
            pytest.skip(f"cannot mount a small tmpfs to fill: {out.stderr.decode().strip()}")
        mounted.append(where)
        return where

    def resize(where: Path, kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(where)], check=True)

    mount.resize = resize
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def assert_one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> str:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    lines = [line for line in out.stderr.strip().splitlines() if not line.startswith(("extract ", "record:"))]  # bars
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_disk_full_error_survives_pickling():
    """Ray pickles a trial's error: the message, errno and details must come back."""
    import pickle

    error = pickle.loads(pickle.dumps(DiskFullError("disk full: x", errno.EDQUOT, what="w", head="h", written=5)))
    got = (str(error), error.errno, error.what, error.head, error.written)
    assert got == ("disk full: x", errno.EDQUOT, "w", "h", 5)


# --------------------------------------------------------------------------------- cut-off feature files (case 5)


@pytest.mark.parametrize("size", [0, 512, 2048])
def test_cache_info_and_repair_refuse_a_cut_off_file_at_once(tmp_path, size):
    """HDF5's SWMR read-open skips the end-of-file check and retried a cut file's metadata for many minutes."""
    good = tmp_path / "good.h5"
    with FeatureStore(good, "a") as store:
        store.require_set(spec()).append(np.ones((50, 6, 5), np.float32))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:size])
    for command in ("info", "repair"):
        line = assert_one_line_error(run_pvrw("cache", command, cut, timeout=120), str(cut))
        if size:
            assert f"is truncated: it has {size} of the {good.stat().st_size} bytes" in line
    assert cut.stat().st_size == size  # repair refused it: left as it was


# ------------------------------------------------------------------------------------------ train on a full disk


TRAIN = (
    "--env", "test_runs_tinyenv:TinyPixels-v0", "--eval-every", "100", "--eval-episodes", "1",
    "--checkpoint-every", "100", "--no-video", "--no-progress", "--threads", "1", "--learning-starts", "40",
    "--batch-size", "16", "--buffer-size", "1000", "--set", "policy_kwargs={hidden_dim: 32, feature_dim: 16}",
    # the checkpoint's own write is what fills the disk here; a disk replay's full disk: test_drm_replay_storage.py
    "--replay-storage", "memory",
)  # fmt: skip
TESTS_ON_PATH = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def allocated_bytes(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def test_train_on_a_full_disk_says_so_in_one_line_and_resumes(tmp_path, small_disk):
    """The disk holds the run up to its first checkpoint and half a checkpoint more: the second cannot be written."""
    env = {**os.environ, **TESTS_ON_PATH}
    sized = tmp_path / "sized"  # the same run, stopped at its first checkpoint, measures what that takes
    assert run_pvrw("train", "--out", sized, "--frames", "100", *TRAIN, env=env).returncode == 0
    checkpoint = allocated_bytes(sized / "checkpoints")
    disk = small_disk((allocated_bytes(sized) + checkpoint // 2) // 1024)
    run = disk / "run"
    out = run_pvrw("train", "--out", run, "--frames", "200", *TRAIN, env=env)
    line = assert_one_line_error(
        out, "disk full: could not write the checkpoint at frame 200; a checkpoint needs about ", " are free. ",
        "The last checkpoint (frame 100", "metrics.csv rows up to it are intact", f"`pvrw train --resume {run}`",
    )  # fmt: skip
    assert "Traceback" not in out.stderr
    status = RunStatus.read(run)
    assert status.state == "failed" and status.error.endswith(line.removeprefix("Error: "))
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]  # the partial checkpoint is gone

    small_disk.resize(disk, 64 << 10)  # the user frees space
    out = run_pvrw("train", "--resume", run, "--no-progress", env=env)
    assert out.returncode == 0, out.stderr
    assert RunStatus.read(run).state == "finished"
    train, evals = read_metrics(RunDir(run).metrics, "train"), read_metrics(RunDir(run).metrics, "eval")
    assert [r["frames"] for r in train] == list(range(20, 201, 20))  # each episode once: none lost, none doubled
    assert [r["frames"] for r in evals] == [100, 200]


def test_train_says_when_even_status_json_could_not_be_written(tmp_path, monkeypatch):
    """Fault injection (no small disk needed): the replay buffer's write fills the disk, and so would status.json."""
    import stable_baselines3.common.off_policy_algorithm as off_policy
    import test_runs_tinyenv  # noqa: F401  (registers the env in this process)

    from pvrw.runs.config import build_config
    from pvrw.runs.training import run_training

    def full_disk_pickle(path, obj, verbose=0):
        Path(path).write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_write = RunStatus.write

    def write(self, run_dir):
        if self.state == "failed":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(self, run_dir)

    monkeypatch.setattr(off_policy, "save_to_pkl", full_disk_pickle)
    monkeypatch.setattr(RunStatus, "write", write)
    config = build_config(
        {"env": "test_runs_tinyenv:TinyState-v0", "threads": 1, "learning_starts": 20, "batch_size": 16,
         "buffer_size": 100, "policy_kwargs": {"hidden_dim": 16, "feature_dim": 8}},
        {"frames": 40, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 20, "video": False},
    )  # fmt: skip
    with pytest.raises(DiskFullError) as err:
        run_training(config, tmp_path / "run")
    message = str(err.value)
    assert re.search(r"could not write the checkpoint at frame 20; a checkpoint needs more than \d+\.\d KiB, ", message)
    assert "No checkpoint was written yet, so training restarts at frame 0" in message
    assert message.endswith("(status.json could not be updated either: it still says 'running')")
    assert err.value.errno == errno.ENOSPC and "\n" not in message
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # the partial checkpoint is gone


# -------------------------------------------------------------------------------------- extract on a full disk


EXTRACT_SCRIPT = """
import sys

import torch
from torch import nn

from pvrw import register_backbone
from pvrw.cli import main

torch.manual_seed(0)
register_backbone("wide", module=nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4096)), output_shape=(4096,))
main(sys.argv[1:])
"""


def test_extract_on_a_full_disk_fails_in_one_line_keeps_its_rows_and_resumes(tmp_path, small_disk):
    """HDF5 crashed (exit 139) closing a file whose write failed for lack of space; now the write fails cleanly."""
    data = tmp_path / "d.h5"
    record_tiny(data, episodes=20, max_steps=25)  # 436 frames of 16 px
    script = tmp_path / "extract.py"
    script.write_text(EXTRACT_SCRIPT)  # a backbone with 16 KiB rows: 436 rows are 7 MiB

    def extract(out: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(script), "extract", "--pvr", "wide", "--frames", str(data), "--out", str(out)]
        return subprocess.run([*cmd, "--batch-size", "16"], capture_output=True, text=True, timeout=300)

    reference = tmp_path / "reference.h5"
    assert extract(reference).returncode == 0
    disk = small_disk(3 << 10)
    out = disk / "features.h5"

    result = extract(out)
    line = assert_one_line_error(result, f"to {out}", "committed and intact: wide ", "run the same extraction")
    with FeatureStore(out) as store:
        committed = len(store.get_set("wide"))
    assert 0 < committed < 436 and f"wide {committed} of 436 frames" in line
    h5py.File(out, "r").close()  # closed cleanly: HDF5 refuses a plain open of a file left flagged open for write

    filler = disk / "filler"  # a disk full before the file could even be created
    with open(filler, "wb", buffering=0) as f, pytest.raises(OSError, match="No space left"):
        while True:
            f.write(b"\0" * 4096)
    result = extract(disk / "other.h5")
    assert_one_line_error(result, f"disk full: could not create {disk / 'other.h5'} (", "committed and intact: none")
    assert sorted(p.name for p in disk.iterdir()) == ["features.h5", "filler"]  # no temporary file left
    filler.unlink()

    small_disk.resize(disk, 16 << 10)
    result = extract(out)
    assert result.returncode == 0, result.stderr
    assert f"wide: {436 - committed} frames extracted, {committed} already there" in result.stdout
    with FeatureStore(out) as got, FeatureStore(reference) as want:
        a, b = got.get_set("wide"), want.get_set("wide")
        np.testing.assert_array_equal(a.read_range(0, 436), b.read_range(0, 436))
        np.testing.assert_array_equal(a.hashes(), b.hashes())


RECORD_SCRIPT = """
import sys

sys.path.insert(0, {tests!r})
import test_feature_cache_recording  # noqa: F401  (registers PvrwCacheTiny-v0)
from pvrw.cli import main

main(sys.argv[1:])
"""


def test_record_on_a_full_disk_fails_in_one_line_and_keeps_its_episodes(tmp_path, small_disk):
    """`pvrw record` crashed the same way (exit 139); now its episodes are kept and it appends once there is room."""
    script = tmp_path / "record.py"
    script.write_text(RECORD_SCRIPT.format(tests=str(TESTS)))
    disk = small_disk(1200)
    out = disk / "episodes.h5"
    cmd = [sys.executable, str(script), "record", "--env", "PvrwCacheTiny-v0", "--resolution", "16",
           "--max-episode-steps", "20", "--action-repeat", "1", "--out", str(out)]  # fmt: skip
    result = subprocess.run([*cmd, "--episodes", "2000"], capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, "disk full: could not write episode ", f"to {out}", "committed before are intact")
    h5py.File(out, "r").close()  # closed cleanly
    with EpisodeDataset(out) as ds:
        kept = ds.num_episodes
    assert kept > 0

    small_disk.resize(disk, 4 << 10)
    result = subprocess.run([*cmd, "--episodes", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with EpisodeDataset(out) as ds:
        assert ds.num_episodes == kept + 2
