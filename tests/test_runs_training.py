"""run_training end to end on a tiny env: the run directory, idempotence, and a killed-and-resumed run.

More kills (at every phase of a run) and the bit-identical resume: test_runs_resume.py.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvrw.runs.config import build_config, load_config
from pvrw.runs.layout import RunDir, RunStatus
from pvrw.runs.metrics import read_metrics
from pvrw.runs.training import run_training

TESTS = Path(__file__).parent

#: DrM on a 4-d state env, tiny networks: a run of a few hundred steps takes seconds
TINY = {
    "env": "test_runs_tinyenv:TinyState-v0",
    "threads": 1,
    "learning_starts": 40,
    "batch_size": 16,
    "buffer_size": 500,
    "policy_kwargs": {"hidden_dim": 32, "feature_dim": 16},
}


def tiny_config(**overrides):
    return build_config(TINY, overrides)


def test_run_directory_layout_and_rerun_is_a_no_op(tmp_path):
    import test_runs_tinyenv  # noqa: F401  (registers the env in this process)

    config = tiny_config(frames=120, eval_every=60, eval_episodes=2, checkpoint_every=60)
    rd = RunDir(tmp_path / "run")
    status = run_training(config, rd.root)
    assert status.state == "finished" and status.frames == 120
    assert load_config(rd.config) == config
    assert (rd.root / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert list(rd.tensorboard.glob("events.out.tfevents.*"))
    assert sorted(p.name for p in rd.videos.iterdir()) == ["eval_0000000060.mp4", "eval_0000000120.mp4"]
    latest = json.loads(rd.latest.read_text())
    assert latest["steps"] == 120 and (rd.checkpoints / latest["dir"] / "replay_buffer.pkl").is_file()
    assert [p.name for p in rd.checkpoints.glob("*_*")] == ["frame_0000000120"]  # named in frames, older ones removed

    train, evals = read_metrics(rd.metrics, "train"), read_metrics(rd.metrics, "eval")
    assert [r["frames"] for r in train] == list(range(20, 121, 20))  # 20-step episodes
    assert [(r["frames"], r["episodes"]) for r in evals] == [(60, 2), (120, 2)]
    assert all(r["dormant_ratio"] is not None and 0 <= r["dormant_ratio"] <= 1 for r in evals)
    assert all(r["success"] in (0.0, 1.0) and r["success_final"] in (0.0, 1.0) for r in train)

    mtime = rd.metrics.stat().st_mtime_ns
    again = run_training(config, rd.root)
    assert again.state == "finished" and rd.metrics.stat().st_mtime_ns == mtime


def test_a_directory_refuses_a_config_that_trains_something_else(tmp_path):
    import test_runs_tinyenv  # noqa: F401

    from pvrw.runs.config import ConfigError

    run_training(tiny_config(frames=40, eval_every=0, eval_episodes=1, video=False), tmp_path / "run")
    with pytest.raises(ConfigError, match="seed=0, not 1"):
        run_training(tiny_config(frames=40, seed=1), tmp_path / "run")
    # a changed mapping entry is named by itself, not as two whole mappings
    with pytest.raises(ConfigError, match=r"algo_kwargs\.batch_size=16, not 8; "):
        run_training(tiny_config(frames=40, batch_size=8), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"algo_kwargs\.n_steps=unset, not 5; "):
        run_training(tiny_config(frames=40, n_steps=5), tmp_path / "run")


def _wait_for(predicate, timeout, proc):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def test_killed_run_resumes_from_its_checkpoint_with_nothing_lost(tmp_path):
    run = tmp_path / "run"
    frames = 400
    cmd = [
        sys.executable, "-c", "from pvrw.cli import main; main()", "train", "--out", str(run),
        "--env", "test_runs_tinyenv:TinyState-v0", "--frames", str(frames), "--eval-every", "100",
        "--eval-episodes", "1", "--checkpoint-every", "100", "--no-video", "--no-progress", "--threads", "1",
        "--learning-starts", "40", "--batch-size", "16", "--buffer-size", "500",
        "--set", "policy_kwargs={hidden_dim: 32, feature_dim: 16}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        got_checkpoint = _wait_for(lambda: (run / "checkpoints" / "latest.json").is_file(), 120, proc)
        assert got_checkpoint, proc.communicate()[0].decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rd = RunDir(run)
    killed_at = json.loads(rd.latest.read_text())["steps"]
    assert RunStatus.read(rd).state == "running" and killed_at < frames  # killed mid-run, not finished

    import test_runs_tinyenv  # noqa: F401

    status = run_training(load_config(rd.config), run)
    assert status.state == "finished" and status.frames == frames and status.attempts == 2

    train, evals = read_metrics(rd.metrics, "train"), read_metrics(rd.metrics, "eval")
    # every 20-step episode exactly once, numbered without gaps, frames continuing across the kill
    assert [r["frames"] for r in train] == list(range(20, frames + 1, 20))
    assert [r["episode"] for r in train] == list(range(1, frames // 20 + 1))
    assert [r["frames"] for r in evals] == [100, 200, 300, 400]
    assert all(b["wall_time"] >= a["wall_time"] for a, b in itertools.pairwise(train))
    # the replay buffer came back with the model: it holds every transition of the run, not only the resumed part
    from pvrw.drm import DrM

    model = DrM.load(rd.checkpoints / json.loads(rd.latest.read_text())["dir"] / "model.zip")
    model.load_replay_buffer(rd.checkpoints / json.loads(rd.latest.read_text())["dir"] / "replay_buffer.pkl")
    assert model.num_timesteps == frames and model.replay_buffer.size() == frames

    # killed at a random moment, the resumed run still ends exactly as an unbroken one (metrics, weights, buffer)
    from test_runs_resume import assert_identical

    run_training(load_config(rd.config), tmp_path / "unbroken")
    assert_identical(tmp_path / "unbroken", run)


def test_pvr_run_embeds_frames_with_a_registered_backbone(tmp_path):
    """The PVR path end to end with a tiny user backbone: features in, DrM MlpPolicy, frames from render()."""
    import test_runs_tinyenv  # noqa: F401
    import torch

    from pvrw.pvr_wrappers import register_backbone
    from pvrw.runs.envs import make_run_env

    pooled = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    register_backbone("tiny_test_pool", module=pooled, output_shape=(6,), overwrite=True)
    config = tiny_config(env="test_runs_tinyenv:TinyPixels-v0", pvr="tiny_test_pool", resolution=32, frames=60,
                         eval_every=30, eval_episodes=1, checkpoint_every=30)  # fmt: skip
    env = make_run_env(config)
    assert env.observation_space.shape == (2, 6)  # TinyPixels stacks 2 frames: one embedding per frame
    env.close()
    status = run_training(config, tmp_path / "run")
    assert status.state == "finished" and status.frames == 60
    evals = read_metrics(RunDir(tmp_path / "run").metrics, "eval")
    assert [r["frames"] for r in evals] == [30, 60]
    assert len(list((tmp_path / "run" / "videos").glob("*.mp4"))) == 2  # pixels recorded under the feature wrapper


def test_sac_on_metaworld_frame_stacks_stores_each_frame_once_unless_a_buffer_is_named():
    from stable_baselines3.common.buffers import ReplayBuffer

    from pvrw.drm.buffers import DrMReplayBuffer
    from pvrw.runs.config import ConfigError
    from pvrw.runs.training import algo_constructor_kwargs

    kwargs = algo_constructor_kwargs(build_config({"algo": "sac", "gamma": 0.98}))
    assert kwargs["replay_buffer_class"] is DrMReplayBuffer
    assert kwargs["replay_buffer_kwargs"] == {"n_steps": 1, "gamma": 0.98}
    named = {"algo": "td3", "replay_buffer_class": "stable_baselines3.common.buffers:ReplayBuffer"}
    assert algo_constructor_kwargs(build_config(named))["replay_buffer_class"] is ReplayBuffer
    assert "replay_buffer_class" not in algo_constructor_kwargs(build_config({"algo": "sac", "env": "Pendulum-v1"}))
    with pytest.raises(ConfigError, match="cannot import 'nowhere:Buffer'"):
        algo_constructor_kwargs(build_config({"algo": "sac", "replay_buffer_class": "nowhere:Buffer"}))


def test_sac_run_with_policy_kwargs_resumes_with_a_fresh_config(tmp_path):
    """SB3's SAC writes ``use_sde`` into the policy_kwargs it gets: the saved config must stay the user's."""
    import test_runs_tinyenv  # noqa: F401

    def sac_config(frames):
        return build_config(
            {**TINY, "algo": "sac", "policy_kwargs": {"net_arch": [16]}},
            dict(frames=frames, eval_every=0, eval_episodes=1, checkpoint_every=60, video=False),
        )

    rd = RunDir(tmp_path / "run")
    assert run_training(sac_config(60), rd.root).frames == 60
    assert load_config(rd.config).algo_kwargs["policy_kwargs"] == {"net_arch": [16]}
    status = run_training(sac_config(120), rd.root)  # extend the run: a fresh config must be accepted
    assert status.state == "finished" and status.frames == 120
