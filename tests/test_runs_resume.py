"""Crash-proof checkpoints and bit-identical resume: a run SIGKILLed anywhere and resumed ends as the unbroken run.

The kills use the ``PVRW_TEST_KILL_AT`` hook (pvrw/runs/faults.py). Each attempt runs in a child forked by one
driver subprocess (``python -c "...; _drive(spec)"``), so the imports are paid once and the test process never forks.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pvrw.runs.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint
from pvrw.runs.config import load_config, save_config
from pvrw.runs.layout import RunDir, RunStatus
from pvrw.runs.metrics import read_metrics
from pvrw.runs.training import run_training
from test_runs_training import tiny_config

TESTS = Path(__file__).parent


def _drive(spec_path: str) -> None:
    """Driver (in its own process): run each attempt of the spec in a forked child; print their exit codes."""
    import traceback

    import test_runs_tinyenv  # noqa: F401

    import pvrw.runs.training

    import torch.utils.tensorboard  # noqa: F401  (imported by each run's logger: once, here)

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo: once, here
    pvrw.runs.training._final_plot = lambda rd: None  # matplotlib's seconds per finished run are not tested here
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("backbone"):
        from pvrw.pvr_wrappers import register_backbone

        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        pooled = torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        register_backbone("tiny_resume_pool", module=pooled, output_shape=(4,), overwrite=True)
    codes = []
    for attempt in spec["attempts"]:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if attempt["kill"]:
                    os.environ["PVRW_TEST_KILL_AT"] = attempt["kill"]
                run_training(load_config(attempt["config"]), attempt["run"])
                code = 0
            except BaseException:  # noqa: BLE001 (reported through the exit code)
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        codes.append(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
    print(json.dumps(codes))


def run_attempts(tmp_path: Path, config, attempts: list[tuple[str, str | None]], backbone: bool = False) -> None:
    """Run ``(run directory name, kill point)`` attempts in order: the killed ones must die (SIGKILL) at their kill
    point, the others finish."""
    save_config(config, tmp_path / "config.yaml")
    spec = {
        "backbone": backbone,
        "attempts": [{"config": str(tmp_path / "config.yaml"), "run": str(tmp_path / run), "kill": kill}
                     for run, kill in attempts],
    }  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("PVRW_TEST_KILL_AT", None)
    code = f"import test_runs_resume as t; t._drive({str(tmp_path / 'spec.json')!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes == [0 if kill is None else -9 for _, kill in attempts], proc.stderr[-3000:]


def final_state(run: Path):
    """metrics.csv without wall time, the final model's parameters and replay buffer of a finished run."""
    from pvrw.drm import DrM

    rd = RunDir(run)
    assert RunStatus.read(rd).state == "finished"
    rows = [{k: v for k, v in row.items() if k != "wall_time"} for row in read_metrics(rd.metrics)]
    latest = json.loads(rd.latest.read_text())
    model = DrM.load(rd.checkpoints / latest["dir"] / "model.zip", device="cpu")
    with open(rd.checkpoints / latest["dir"] / "replay_buffer.pkl", "rb") as f:
        buffer = pickle.load(f)
    return rows, model.policy.state_dict(), buffer, latest


def assert_identical(a: Path, b: Path) -> None:
    rows_a, params_a, buffer_a, latest_a = final_state(a)
    rows_b, params_b, buffer_b, latest_b = final_state(b)
    assert rows_a == rows_b  # every row once, with the same values, but wall time
    assert params_a.keys() == params_b.keys()
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a), "model parameters differ"
    arrays = [k for k, v in vars(buffer_a).items() if isinstance(v, np.ndarray)]
    assert "actions" in arrays and all(np.array_equal(getattr(buffer_a, k), getattr(buffer_b, k)) for k in arrays)
    assert (buffer_a.pos, buffer_a.full) == (buffer_b.pos, buffer_b.full)
    assert (latest_a["steps"], latest_a["episodes"]) == (latest_b["steps"], latest_b["episodes"])


def test_a_run_killed_at_every_phase_and_resumed_ends_bit_identical(tmp_path):
    # 15-step episodes, 2-step rollouts: episodes end at a rollout start every 30 steps, so the checkpoints due at
    # 20, 40, 80, 100 frames wait for the episode ends at 30, 60, 90, 120; evaluations at 50, 100, 150
    config = tiny_config(frames=150, eval_every=50, eval_episodes=2, checkpoint_every=20, video=False,
                         env_kwargs={"max_steps": 15})  # fmt: skip
    kills = [
        "checkpoint-files@30",  # the first checkpoint is in its temporary directory: nothing to resume from
        "checkpoint-renamed@30",  # in place, latest.json not yet written: resume from it
        "step@45",  # mid-episode, after a checkpoint
        "eval@50",  # during an evaluation
        "checkpoint-committed@60",  # the resume's first checkpoint is committed, the old one not yet deleted
        "eval-done@100",  # an evaluation row is written, then killed: the resume writes it once
        "checkpoint-done@120",
        "eval@150",  # during the final evaluation
        "eval-done@150",  # after the final evaluation, before the final checkpoint
        "checkpoint-files@150",
        "checkpoint-renamed@150",  # the final checkpoint is in place but not committed: resumed from 120
        "checkpoint-done@150",  # between the final checkpoint and status "finished"
        "finishing",
    ]
    run_attempts(tmp_path, config, [("unbroken", None)] + [("killed", k) for k in kills] + [("killed", None)])
    rd = RunDir(tmp_path / "killed")
    assert RunStatus.read(rd).attempts == len(kills) + 1
    assert_identical(tmp_path / "unbroken", rd.root)
    evals = read_metrics(rd.metrics, "eval")
    assert [r["frames"] for r in evals] == [50, 100, 150]  # the case: no second "eval,150" row
    assert [r["frames"] for r in read_metrics(rd.metrics, "train")] == list(range(15, 151, 15))
    # checkpoints are named in frames, the final one was never written over the uncommitted one of the same frame
    assert json.loads(rd.latest.read_text())["dir"] == "frame_0000000150_1"
    assert sorted(p.name for p in rd.checkpoints.iterdir()) == ["frame_0000000150_1", "latest.json"]
    unbroken = RunDir(tmp_path / "unbroken")
    assert sorted(p.name for p in unbroken.checkpoints.iterdir()) == ["frame_0000000150", "latest.json"]


def test_a_pvr_run_with_feature_augmentation_resumes_bit_identical(tmp_path):
    """The feature wrapper's own random shift generator and the frame-rendering env come back too."""
    config = tiny_config(env="test_runs_tinyenv:TinyPixels-v0", pvr="tiny_resume_pool", resolution=32, frames=100,
                         eval_every=50, eval_episodes=1, checkpoint_every=30, video=False,
                         pvr_kwargs={"augment": True, "augment_pad": 2},
                         replay_buffer_kwargs={"frame_stack": 1},  # each step shifts every frame anew
                         replay_storage="memory")  # fmt: skip (the replay in RAM, pickled)
    attempts = [("unbroken", None), ("killed", "checkpoint-done@40"), ("killed", "step@73"), ("killed", None)]
    run_attempts(tmp_path, config, attempts, backbone=True)
    assert_identical(tmp_path / "unbroken", tmp_path / "killed")


class _TinyModel:
    """Enough of an SB3 model for save_checkpoint."""

    replay_buffer = None

    def __init__(self, steps: int):
        self.num_timesteps = steps

    def save(self, path):
        import zipfile

        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("data", "x" * 1000)


def test_a_damaged_or_missing_checkpoint_falls_back_to_a_complete_one_or_is_refused(tmp_path):
    rd = RunDir(tmp_path / "run")
    save_checkpoint(_TinyModel(10), rd, frames=10, episodes=1, wall_time=1.0, keep=2, metrics_rows=1)
    save_checkpoint(_TinyModel(20), rd, frames=20, episodes=2, wall_time=2.0, keep=2, metrics_rows=2)
    assert latest_checkpoint(rd).dir == "frame_0000000020"
    model_zip = rd.checkpoints / "frame_0000000020" / "model.zip"
    model_zip.write_bytes(model_zip.read_bytes()[:100])  # cut
    with pytest.warns(UserWarning, match=r"names frame_0000000020, which is damaged \(model.zip: 100 of \d+ bytes\); "
                                         r"resuming from frame_0000000010"):  # fmt: skip
        assert latest_checkpoint(rd).dir == "frame_0000000010"
    (rd.checkpoints / "frame_0000000010" / "model.zip").unlink()
    with pytest.raises(CheckpointError, match="no other complete checkpoint is there") as err:
        latest_checkpoint(rd)
    assert "\n" not in str(err.value)
    import shutil

    shutil.rmtree(rd.checkpoints / "frame_0000000020")
    with pytest.raises(CheckpointError, match="names frame_0000000020, which is missing"):
        latest_checkpoint(rd)


def test_resume_with_a_missing_checkpoint_is_refused_in_one_line_not_restarted(tmp_path):
    """The issue's case: latest.json naming nothing made --resume retrain from frame 0, rewriting metrics.csv."""
    import shutil

    import test_runs_tinyenv  # noqa: F401

    from pvrw.cli import main

    run = tmp_path / "run"
    run_training(tiny_config(frames=40, eval_every=0, eval_episodes=1, checkpoint_every=20, video=False), run)
    rd = RunDir(run)
    status = RunStatus.read(rd)
    status.state = "running"  # as if killed before it finished
    status.write(rd)
    shutil.rmtree(rd.checkpoints / json.loads(rd.latest.read_text())["dir"])
    metrics = rd.metrics.read_bytes()
    result = CliRunner().invoke(main, ["train", "--resume", str(run), "--frames", "60", "--no-progress"])
    assert result.exit_code == 1
    assert "which is missing, and no other complete checkpoint is there" in result.output
    assert "Traceback" not in result.output and rd.metrics.read_bytes() == metrics


def test_a_run_with_step_named_checkpoints_resumes_without_repeating_its_final_evaluation(tmp_path):
    """Runs written before checkpoints counted frames (step_<steps>/, no state.pkl, no row count) still resume."""
    import test_runs_tinyenv  # noqa: F401

    config = tiny_config(frames=40, eval_every=20, eval_episodes=1, checkpoint_every=20, video=False)
    rd = RunDir(tmp_path / "run")
    run_training(config, rd.root)
    latest = json.loads(rd.latest.read_text())
    old = rd.checkpoints / "step_0000000040"
    (rd.checkpoints / latest["dir"]).rename(old)
    for name in ("state.pkl", "checkpoint.json"):
        (old / name).unlink()
    old_latest = {k: latest[k] for k in ("steps", "frames", "episodes", "wall_time", "has_replay_buffer")}
    rd.latest.write_text(json.dumps({**old_latest, "dir": old.name}))
    status = RunStatus.read(rd)
    status.state = "running"  # killed between its last checkpoint and "finished"
    status.write(rd)
    with pytest.warns(UserWarning, match="holds no random state"):
        assert run_training(config, rd.root).state == "finished"
    assert [r["frames"] for r in read_metrics(rd.metrics, "eval")] == [20, 40]

    extended = tiny_config(frames=60, eval_every=20, eval_episodes=1, checkpoint_every=20, video=False)
    with pytest.warns(UserWarning, match="holds no random state"):
        assert run_training(extended, rd.root).frames == 60
    assert [r["frames"] for r in read_metrics(rd.metrics, "eval")] == [20, 40, 60]
    assert sorted(p.name for p in rd.checkpoints.iterdir()) == ["frame_0000000060", "latest.json"]


def test_env_random_state_goes_back_into_an_env_built_the_same_way():
    import functools

    import gymnasium as gym
    from test_runs_tinyenv import TinyState

    from pvrw.runs.rng_state import env_rng_state, set_env_rng_state

    class LazySpace(TinyState):
        @functools.cached_property
        def goal_space(self):  # made on first use, as Meta-World's sawyer_observation_space
            return gym.spaces.Box(-1, 1, (2,))

    def make():
        return gym.wrappers.TimeLimit(LazySpace(), 50)

    env = make()
    env.reset(seed=3)
    env.unwrapped.goal_space  # noqa: B018  (exists here, not yet in the new env: it was never sampled)
    env.action_space.seed(4)
    state = env_rng_state(env)
    expected = env.reset()[0], env.action_space.sample()
    new = make()
    assert set_env_rng_state(new, state)
    got = new.reset()[0], new.action_space.sample()
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert not set_env_rng_state(gym.wrappers.TimeLimit(TinyState(), 50), state)  # another env class: refused
