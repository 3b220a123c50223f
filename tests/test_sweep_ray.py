"""The Ray backend of sweeps and extraction: same run directories as the local queue, restarts after a dead worker.

Runs are tiny TD3 runs on classic-control Gymnasium tasks (no rendering), so the tests measure the backend, not RL.
(TD3 rather than SAC: SB3's SAC adds ``use_sde`` to the ``policy_kwargs`` dict it is given, which currently leaks into
the saved config.yaml and makes a resume refuse the run; reported, unrelated to Ray.)
Killing a worker is done from outside, like a lost node: the test reads the trial's PID from the run's
``status.json`` (written by the worker at each checkpoint) and sends it SIGKILL.
"""

from __future__ import annotations

import builtins
import copy
import json
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pvrw.runs.config import save_config
from pvrw.runs.layout import RunDir, RunStatus
from pvrw.runs.sweep import expand_grid, run_local

TINY = {
    "frames": 300,
    "eval_every": 150,
    "eval_episodes": 1,
    "checkpoint_every": 100,
    "video": False,
    "device": "cpu",
    "env_kwargs": {"max_episode_steps": 50},
    "algo_kwargs": {"buffer_size": 1000, "batch_size": 16, "learning_starts": 200, "policy_kwargs": {"net_arch": [16]}},
}
GRID = {"tasks": ["Pendulum-v1", "MountainCarContinuous-v0"], "pvrs": ["none"], "resolutions": [64], "seeds": [0, 1]}


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def grid(root: Path):
    # deep copies: SB3 adds keys to the policy_kwargs it is given, which must not leak into the next grid
    return expand_grid(root, **GRID, algo="td3", base=copy.deepcopy(TINY))


def layout(run_dir: Path) -> list[str]:
    """Relative paths of a run directory's files, TensorBoard event names (host, time, pid) normalised."""
    names = []
    for path in sorted(run_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(run_dir).as_posix()
            names.append("tb/events.out.tfevents.*" if rel.startswith("tb/events.out.tfevents") else rel)
    return sorted(names)


def metrics_without_wall_time(run_dir: Path) -> list[list[str]]:
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    column = rows[0].index("wall_time")
    return [row[:column] + row[column + 1 :] for row in rows]


@pytest.fixture(scope="module")
def both_backends(ray_session, tmp_path_factory):
    """The same 2x2 grid run by the local queue and by Ray."""
    from pvrw.runs.ray_backend import run_ray

    local_root, ray_root = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("ray")
    local_counts = run_local(grid(local_root), local_root, progress=False)
    events = []
    ray_counts = run_ray(grid(ray_root), ray_root, cpus_per_run=1, on_run=lambda run, event: events.append(event))
    return local_root, ray_root, local_counts, ray_counts, events


def test_ray_grid_completes_with_the_layout_of_local_runs(both_backends, tmp_path):
    tmp = tmp_path
    local_root, ray_root, local_counts, ray_counts, events = both_backends
    assert local_counts == {"skipped": 0, "finished": 4, "failed": 0, "busy": 0}
    assert ray_counts == {"skipped": 0, "finished": 4, "failed": 0, "busy": 0}
    assert sorted(events) == ["done"] * 4 + ["start"] * 4
    index = json.loads((ray_root / "sweep.json").read_text())["runs"]
    assert len(index) == 4 and {entry["state"] for entry in index} == {"finished"}
    for run in grid(local_root):
        local_dir = run.run_dir
        ray_dir = ray_root / local_dir.relative_to(local_root)
        assert layout(ray_dir) == layout(local_dir)
        assert "metrics.csv" in layout(ray_dir) and "config.yaml" in layout(ray_dir)
        fresh = tmp / f"{ray_dir.name}.yaml"
        save_config(run.config, fresh)  # a config built independently of both runs
        assert (ray_dir / "config.yaml").read_text() == fresh.read_text()
        status = RunStatus.read(RunDir(ray_dir))
        assert (status.state, status.frames, status.attempts) == ("finished", 300, 1)
        assert status.pid != os.getpid()  # trained in a Ray worker, not in the test process


def test_ray_and_local_backends_give_identical_metrics(both_backends):
    local_root, ray_root, *_ = both_backends
    for run in grid(local_root):
        local_rows = metrics_without_wall_time(run.run_dir)
        ray_rows = metrics_without_wall_time(ray_root / run.run_dir.relative_to(local_root))
        assert len(local_rows) > 3 and any(row[0] == "eval" for row in local_rows)
        assert ray_rows == local_rows
    seed_0 = metrics_without_wall_time(ray_root / "Pendulum-v1/td3_none_64/seed_0")
    seed_1 = metrics_without_wall_time(ray_root / "Pendulum-v1/td3_none_64/seed_1")
    assert seed_0 != seed_1  # the comparison can tell runs apart


def test_rerun_skips_finished_runs_without_starting_ray(both_backends, monkeypatch):
    from pvrw.runs import ray_backend

    _, ray_root, *_ = both_backends
    monkeypatch.setattr(ray_backend, "init_ray", lambda *a, **k: pytest.fail("Ray started for a finished grid"))
    events = []
    counts = ray_backend.run_ray(grid(ray_root), ray_root, on_run=lambda run, event: events.append(event))
    assert counts == {"skipped": 4, "finished": 0, "failed": 0, "busy": 0} and events == ["skip"] * 4


def kill_after_checkpoint(run_dir: Path, min_frames: int, killed: dict) -> threading.Thread:
    """SIGKILL the worker training ``run_dir`` once it has a checkpoint of at least ``min_frames`` frames."""

    def watch() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                status = RunStatus.read(RunDir(run_dir))
            except (OSError, ValueError):  # status.json replaced under our feet
                status = None
            if status is not None and status.state == "running" and status.checkpoint and status.frames >= min_frames:
                if status.pid != os.getpid() and status.frames < status.total_frames:
                    killed.update(pid=status.pid, frames=status.frames)
                    os.kill(status.pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


KILL_RUN = {
    **TINY,
    "frames": 600,
    "checkpoint_every": 200,
    "eval_every": 300,
    "algo_kwargs": {**TINY["algo_kwargs"], "learning_starts": 250},
}


def check_resumed_run(run_dir: Path, killed: dict) -> None:
    status = RunStatus.read(RunDir(run_dir))
    assert (status.state, status.frames, status.attempts) == ("finished", 600, 2)
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    train = [row for row in rows if row[0] == "train"]
    assert [int(row[3]) for row in train] == list(range(1, len(train) + 1))  # episodes neither lost nor repeated
    assert [int(row[1]) for row in train] == [50 * i for i in range(1, 13)]  # 600 frames, 50-step episodes
    assert [int(row[1]) for row in rows if row[0] == "eval"] == [300, 600]
    with open(run_dir / "checkpoints" / "frame_0000000600" / "replay_buffer.pkl", "rb") as f:
        buffer = pickle.load(f)
    # the resumed attempt started from the checkpoint's buffer: it holds every transition of both attempts (600 steps),
    # not only the <= 200 of the second
    assert killed["frames"] >= 400 and buffer.pos == 600


def test_killed_worker_restarts_from_its_checkpoint(ray_session, tmp_path):
    from pvrw.runs.ray_backend import run_ray

    runs = expand_grid(tmp_path, ["Pendulum-v1"], ["none"], [64], [3], algo="td3", base=copy.deepcopy(KILL_RUN))
    killed: dict = {}
    watcher = kill_after_checkpoint(runs[0].run_dir, 400, killed)
    events = []
    counts = run_ray(runs, tmp_path, max_failures=2, on_run=lambda run, event: events.append(event))
    watcher.join(timeout=1)
    assert killed, "the watcher never saw a checkpoint to kill after"
    assert events == ["start", "retry", "start", "done"]  # Tune restarts the trial after the worker died
    assert counts == {"skipped": 0, "finished": 1, "failed": 0, "busy": 0}
    check_resumed_run(runs[0].run_dir, killed)


def test_without_retries_a_killed_run_is_failed_then_resumed_by_rerunning(ray_session, tmp_path):
    from pvrw.runs.ray_backend import run_ray

    runs = expand_grid(tmp_path, ["Pendulum-v1"], ["none"], [64], [3], algo="td3", base=copy.deepcopy(KILL_RUN))
    killed: dict = {}
    watcher = kill_after_checkpoint(runs[0].run_dir, 400, killed)
    assert run_ray(runs, tmp_path, max_failures=0) == {"skipped": 0, "finished": 0, "failed": 1, "busy": 0}
    watcher.join(timeout=1)
    (entry,) = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert entry["state"] == "failed" and entry["frames"] == killed["frames"] and "died" in entry["error"].lower()
    assert run_ray(runs, tmp_path, max_failures=0) == {"skipped": 0, "finished": 1, "failed": 0, "busy": 0}
    check_resumed_run(runs[0].run_dir, killed)


@pytest.fixture
def without_ray(monkeypatch):
    """Make ``import ray`` fail as it does where Ray is not installed."""
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    for key in [k for k in sys.modules if k == "ray" or k.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, key)


def test_missing_ray_is_a_clear_error(without_ray, tmp_path):
    from pvrw.runs import ray_backend, ray_extract

    with pytest.raises(ray_backend.RayNotInstalledError, match=r'pip install "pvrw\[ray\]"'):
        ray_backend.run_ray(grid(tmp_path), tmp_path)
    with pytest.raises(ImportError, match=r'pip install "pvrw\[ray\]"'):
        ray_extract.extract_features_ray(tmp_path / "frames.h5", [], tmp_path / "out.h5")
    assert not (tmp_path / "sweep.json").exists()  # nothing written before the error


@pytest.fixture
def forget_test_backbone():
    """Unregister the tiny test backbone afterwards (tests elsewhere list the registry)."""
    from backbone_helpers import forget_backbones

    yield
    forget_backbones(["ray_test_tiny"])


def test_extraction_over_ray_workers_matches_local_extraction(ray_session, tmp_path, forget_test_backbone):
    import torch
    from click.testing import CliRunner
    from torch import nn

    from pvrw.backbones.registry import create_backbone, register_backbone
    from pvrw.cli import main
    from pvrw.feature_cache.extraction import extract_features
    from pvrw.feature_cache.recording import EpisodeWriter
    from pvrw.feature_cache.store import FeatureStore
    from pvrw.runs.ray_extract import extract_features_ray

    rng = np.random.default_rng(0)
    with EpisodeWriter(tmp_path / "episodes.h5", (3, 16, 16), 2) as writer:
        for steps in (20, 21, 22):
            frames = rng.integers(0, 256, (steps + 1, 3, 16, 16), dtype=np.uint8)
            no = np.zeros(steps, bool)
            writer.add_episode(frames, rng.standard_normal((steps, 2)), np.zeros(steps), no, no, no)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    register_backbone("ray_test_tiny", module=net, output_shape=(16,), overwrite=True)
    backbone = create_backbone("ray_test_tiny", resolution=16)

    first = extract_features_ray(tmp_path / "episodes.h5", [backbone], tmp_path / "ray.h5", batch_size=8,
                                 num_workers=2, max_frames=30)  # fmt: skip
    assert first == {"ray_test_tiny": {"done_before": 0, "extracted": 30, "total": 30}}
    # the rest through the CLI (same process, so the backbone registered above is known)
    args = [
        "extract",
        "--pvr",
        "ray_test_tiny",
        "--frames",
        str(tmp_path / "episodes.h5"),
        "--out",
        str(tmp_path / "ray.h5"),
    ]
    resumed = CliRunner().invoke(main, [*args, "--batch-size", "8", "--backend", "ray", "--workers", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert "36 frames extracted, 30 already there, 66 total" in resumed.output
    extract_features(tmp_path / "episodes.h5", [backbone], tmp_path / "local.h5", batch_size=8)
    with FeatureStore(tmp_path / "ray.h5") as on_ray, FeatureStore(tmp_path / "local.h5") as local:
        a, b = on_ray.get_set("ray_test_tiny"), local.get_set("ray_test_tiny")
        assert a.spec == b.spec
        np.testing.assert_array_equal(a.read_range(0, 66), b.read_range(0, 66))
        np.testing.assert_array_equal(a.hashes(), b.hashes())
        assert np.abs(a.read_range(0, 66)).sum() > 0


def test_cli_missing_ray_is_a_one_line_error(without_ray, tmp_path):
    from click.testing import CliRunner

    from pvrw.cli import main

    args = ["sweep", "--tasks", "Pendulum-v1", "--pvr", "none", "--resolution", "64", "--seeds", "1", "--algo", "td3"]
    result = CliRunner().invoke(main, [*args, "--root", str(tmp_path), "--backend", "ray"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and 'pip install "pvrw[ray]"' in lines[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback


def test_cli_sweep_on_ray_trains_then_skips(ray_session, tmp_path):
    import yaml
    from click.testing import CliRunner

    from pvrw.cli import main

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(copy.deepcopy(TINY)))
    args = ["sweep", "--tasks", "Pendulum-v1", "--pvr", "none", "--resolution", "64", "--seeds", "5,", "--algo", "td3"]
    args += ["--config", str(tmp_path / "tiny.yaml"), "--root", str(tmp_path / "sweep"), "--backend", "ray"]
    args += ["--cpus-per-run", "1", "--no-progress"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "[done]" in first.output and "1 finished now, 0 failed" in first.output
    status = RunStatus.read(RunDir(tmp_path / "sweep/Pendulum-v1/td3_none_64/seed_5"))
    assert (status.state, status.frames) == ("finished", 300)
    plotted = CliRunner().invoke(main, ["plot", str(tmp_path / "sweep"), "--out", str(tmp_path / "fig.png")])
    assert plotted.exit_code == 0 and "1 runs" in plotted.output, plotted.output  # pvrw plot reads a Ray sweep as is
    assert (tmp_path / "fig.png").stat().st_size > 0
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0 and "1 already finished, 0 finished now" in second.output, second.output
    too_big = CliRunner().invoke(main, [*args, "--cpus-per-run", "64"])  # finished runs are skipped before Ray ...
    assert too_big.exit_code == 0, too_big.output
    (tmp_path / "sweep/Pendulum-v1/td3_none_64/seed_5/status.json").unlink()  # ... so make the run unfinished
    too_big = CliRunner().invoke(main, [*args, "--cpus-per-run", "64"])
    assert too_big.exit_code == 1 and "no Ray node has that much" in too_big.output, too_big.output


def test_a_request_no_node_can_hold_is_refused_naming_the_options_to_lower():
    from types import SimpleNamespace

    from pvrw.runs.ray_backend import RayResourceError, check_resources

    cluster = SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    check_resources(cluster, 2, 0, "each run")  # fits
    with pytest.raises(RayResourceError, match=r"\(2 CPU/0 GPU\); lower --cpus-per-run/--gpus-per-run"):
        check_resources(cluster, 1, 1, "each run")
    with pytest.raises(RayResourceError, match="each extraction worker .* lower --gpus-per-worker or"):
        check_resources(cluster, 1, 0.5, "each extraction worker", fix="--gpus-per-worker")


def test_a_run_in_use_by_another_process_is_left_to_it(ray_session, tmp_path):
    from test_runs_lock import hold, release

    from pvrw.runs.ray_backend import run_ray

    (run,) = expand_grid(tmp_path, ["Pendulum-v1"], ["none"], [64], [0], algo="td3", base=copy.deepcopy(TINY))
    holder = hold(run.run_dir)
    events = []
    try:
        counts = run_ray([run], tmp_path, max_failures=2, on_run=lambda run, event: events.append(event))
    finally:
        release(holder)
    assert counts == {"skipped": 0, "finished": 0, "failed": 0, "busy": 1}
    assert events == ["start", "busy"]  # not retried: the holder trains it
    assert not (run.run_dir / "status.json").exists()  # the holder's run is not marked failed
    (entry,) = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert entry["state"] == "pending"
