"""A run's replay buffer on disk (``replay_storage: disk``, the default of runs): kill/resume, moved run directories,
fallback to an older checkpoint, checkpoint size, the space check before a run starts."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvrw.runs.layout import RunDir
from pvrw.runs.training import run_training
from test_runs_resume import assert_identical, run_attempts
from test_runs_training import tiny_config


def _allocated(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (``du``: sparse files count what is written)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def test_a_disk_replay_run_resumes_bit_identical_from_an_older_buffer_checkpoint_in_a_moved_directory(tmp_path):
    # 15-step episodes: checkpoints at 30, 60, 90 and 100 frames (see test_runs_resume)
    config = tiny_config(frames=100, eval_every=0, eval_episodes=1, checkpoint_every=20, video=False,
                         env_kwargs={"max_steps": 15}, replay_storage="disk")  # fmt: skip
    run_attempts(tmp_path, config, [
        ("unbroken", None),
        # the buffer's checkpoint 2 is written, the run's checkpoint at 60 is not: the resume reopens checkpoint 1
        ("killed", "checkpoint-files@60"),
        # the checkpoint at 90 is committed, the one at 60 (older buffer checkpoint) not yet deleted
        ("killed", "checkpoint-committed@90"),
    ])  # fmt: skip
    killed = RunDir(tmp_path / "killed")
    info = json.loads((killed.checkpoints / "frame_0000000090" / "checkpoint.json").read_text())
    assert info["replay"]["dir"] == "replay" and (killed.replay / "frames.npy").is_file()
    # the newest checkpoint is damaged: the resume falls back to the one at 60, whose buffer checkpoint is the older
    # of the two the storage keeps; and the run directory moved, so no absolute path may be used
    model_zip = killed.checkpoints / "frame_0000000090" / "model.zip"
    model_zip.write_bytes(model_zip.read_bytes()[:100])
    os.rename(killed.root, tmp_path / "moved")
    run_attempts(tmp_path, config, [("moved", None)])
    assert not killed.root.exists()
    assert_identical(tmp_path / "unbroken", tmp_path / "moved")
    moved = RunDir(tmp_path / "moved")
    latest = json.loads(moved.latest.read_text())
    assert (moved.checkpoints / latest["dir"] / "replay_buffer.pkl").stat().st_size < 1000  # a reference


def test_a_checkpoint_whose_buffer_checkpoint_is_gone_is_passed_over(tmp_path):
    import test_runs_tinyenv  # noqa: F401

    from pvrw.runs.checkpoint import checkpoint_problem, latest_checkpoint

    rd = RunDir(tmp_path / "run")
    run_training(tiny_config(frames=40, eval_every=0, eval_episodes=1, checkpoint_every=20, video=False), rd.root)
    info = latest_checkpoint(rd)
    assert checkpoint_problem(rd, info) is None
    generation = json.loads((rd.checkpoints / info.dir / "checkpoint.json").read_text())["replay"]["generation"]
    (rd.replay / f"state.{generation:08d}.pkl").unlink()
    assert checkpoint_problem(rd, info) == f"stale (its replay buffer, checkpoint {generation} of replay/, is gone)"


def test_a_default_train_run_checkpoints_in_proportion_to_what_it_stored(tmp_path):
    """The issue's case: a short run with a 1M-transition buffer wrote a checkpoint of the whole buffer (21 GB)."""
    import test_runs_tinyenv  # noqa: F401

    from pvrw.cli import main

    run = tmp_path / "run"
    args = ["train", "--env", "test_runs_tinyenv:TinyPixels-v0", "--frames", "60", "--buffer-size", "1000000",
            "--eval-every", "0", "--eval-episodes", "1", "--no-video", "--no-progress", "--threads", "1",
            "--learning-starts", "40", "--batch-size", "8", "--set", "policy_kwargs.hidden_dim=16",
            "--set", "policy_kwargs.feature_dim=8", "--out", str(run)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rd = RunDir(run)
    latest = json.loads(rd.latest.read_text())
    with open(rd.checkpoints / latest["dir"] / "replay_buffer.pkl", "rb") as f:
        buffer = pickle.load(f)
    assert buffer.storage == "disk" and buffer.buffer_size == 1_000_000 and buffer.pos == 60
    full = buffer.nbytes()  # about 4 GB: 1M frames of 3x36x36
    buffer.close()
    assert full > 3e9
    # what the run holds on disk: the model, the 60 transitions' chunks (8 MB per array at most) and small state
    stored = _allocated(rd.checkpoints) + _allocated(rd.replay)
    assert stored < 0.02 * full
    assert (rd.checkpoints / latest["dir"] / "replay_buffer.pkl").stat().st_size < 1000

    # --overwrite deletes the replay storage with the rest of the run (a storage left there refuses to be created)
    result = CliRunner().invoke(main, [*args, "--overwrite", "--frames", "20"])
    assert result.exit_code == 0, result.output
    latest = json.loads(rd.latest.read_text())
    with open(rd.checkpoints / latest["dir"] / "replay_buffer.pkl", "rb") as f:
        buffer = pickle.load(f)
    assert buffer.pos == 20
    buffer.close()


TINY_PIXELS = ["train", "--env", "test_runs_tinyenv:TinyPixels-v0", "--frames", "60", "--buffer-size", "1000000",
               "--no-progress", "--set", "policy_kwargs.hidden_dim=16",
               "--set", "policy_kwargs.feature_dim=8"]  # fmt: skip


def test_a_run_whose_replay_buffer_cannot_fit_on_disk_is_refused_in_one_line(tmp_path, monkeypatch):
    import test_runs_tinyenv  # noqa: F401

    import pvrw.runs.replay
    from pvrw.cli import main

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(pvrw.runs.replay.shutil, "disk_usage", lambda path: usage._replace(free=10_000_000))
    result = CliRunner().invoke(main, [*TINY_PIXELS, "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    # 60 transitions: one 8 MB chunk of frames and actions, rewards, dones, timeouts (4 MB each) and obs_frame (8 MB)
    assert "the replay buffer needs 36.4 MB for the 60 transitions this run stores" in line
    assert "its disk has 10.0 MB free; free some space, lower buffer_size or frames, or train with" in line
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before the run was set up
    # memory storage: the same need in RAM is a warning (the kernel may find room)
    monkeypatch.setattr(pvrw.runs.replay, "available_memory", lambda: 1_000_000)
    with pytest.warns(UserWarning, match=r"the replay buffer needs 8\.1 MB for the 20 transitions this run stores "
                                         r"in RAM, and 1\.0 MB is available"):  # fmt: skip
        result = CliRunner().invoke(main, [*TINY_PIXELS, "--frames", "20", "--replay-storage", "memory",
                                           "--out", str(tmp_path / "mem")])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_sweep_passes_replay_storage_to_every_run(tmp_path):
    import test_runs_tinyenv  # noqa: F401

    from pvrw.cli import main
    from pvrw.runs.config import load_config

    args = ["sweep", "--tasks", "test_runs_tinyenv:TinyState-v0", "--pvr", "none", "--resolution", "36", "--seeds", "1",
            "--frames", "40", "--root", str(tmp_path), "--no-progress", "--set", "eval_every=0",
            "--set", "eval_episodes=1", "--set", "video=false", "--set", "learning_starts=20", "--set", "batch_size=8",
            "--set", "buffer_size=100", "--set", "threads=1", "--set", "policy_kwargs.hidden_dim=16"]  # fmt: skip
    result = CliRunner().invoke(main, [*args, "--replay-storage", "memory"])
    assert result.exit_code == 0, result.output
    (run,) = [p.parent for p in tmp_path.rglob("config.yaml")]
    assert load_config(run / "config.yaml").replay_storage == "memory" and not (run / "replay").exists()
    assert "--replay-storage" in CliRunner().invoke(main, ["sweep", "--help"]).output


def test_a_moved_run_saved_without_its_buffer_starts_a_new_storage_in_its_own_directory(tmp_path):
    import test_runs_tinyenv  # noqa: F401

    config = tiny_config(frames=40, eval_every=0, eval_episodes=1, checkpoint_every=20, video=False,
                         save_replay_buffer=False)  # fmt: skip
    run_training(config, tmp_path / "first")
    assert (tmp_path / "first" / "replay").is_dir()  # the run's storage, never checkpointed into a checkpoint
    os.rename(tmp_path / "first", tmp_path / "second")
    config.frames = 80
    assert run_training(config, tmp_path / "second").frames == 80
    assert not (tmp_path / "first").exists() and (tmp_path / "second" / "replay" / "frames.npy").is_file()
