"""The run commands through click's CliRunner on tiny budgets: train, eval, plot, sweep, params, bench, errors."""

import json

import click
import pytest
import test_runs_tinyenv  # noqa: F401  (registers the tiny envs)
from click.testing import CliRunner

from pvrw import __version__
from pvrw.cli import COMMANDS, main
from pvrw.runs.layout import RunStatus
from pvrw.runs.metrics import read_metrics

ENV = "test_runs_tinyenv:TinyState-v0"
TINY = [
    "--env", ENV, "--threads", "1", "--learning-starts", "30", "--batch-size", "16", "--buffer-size", "300",
    "--set", "policy_kwargs={hidden_dim: 32, feature_dim: 16}", "--no-progress",
]  # fmt: skip


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _all_commands():
    """(path, command) for every command and sub-command of ``pvrw``."""
    found = []

    def walk(group, path):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            found.append(((*path, name), command))
            if isinstance(command, click.Group):
                walk(command, (*path, name))

    walk(main, ())
    return found


@pytest.mark.parametrize(
    ("path", "command"), _all_commands(), ids=lambda x: " ".join(x) if isinstance(x, tuple) else ""
)
def test_every_option_is_documented(path, command):
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    undocumented = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert not undocumented, f"{path}: options without help: {undocumented}"
    # the command lists show a whole sentence, not one cut off with "..."
    assert not command.get_short_help_str(limit=60).endswith("..."), command.get_short_help_str(limit=60)


def test_version_and_the_main_help():
    assert invoke("--version").output.strip() == f"pvrw, version {__version__}"
    text = invoke("--help").output
    assert set(COMMANDS) <= {line.split()[0] for line in text.split("Commands:")[1].splitlines() if line.strip()}
    assert "pvrw train --preset smoke" in text


def test_train_eval_plot(tmp_path):
    run = tmp_path / "run"
    result = invoke("train", *TINY, "--frames", "80", "--eval-every", "40", "--eval-episodes", "2",
                    "--checkpoint-every", "40", "--out", str(run))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "finished 80 frames" in result.output and "last evaluation (2 episodes at 80 frames)" in result.output
    assert {"config.yaml", "metrics.csv", "status.json", "tb", "checkpoints", "videos", "plot.png"} <= {
        p.name for p in run.iterdir()
    }

    result = invoke("eval", str(run), "--episodes", "3", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["episodes"] == 3 and record["frames"] == 80
    assert 0 <= record["success"] <= 1 and 0 <= record["success_final"] <= record["success"]
    assert json.loads((run / "eval.json").read_text()) == record
    # deterministic evaluation tasks and a deterministic policy: the same numbers again
    again = json.loads(invoke("eval", str(run), "--episodes", "3", "--json").output)
    assert again["reward"] == record["reward"]

    result = invoke("plot", str(run), "--out", str(tmp_path / "fig.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG" and "1 runs, 1 lines" in result.output
    # the same run named twice (directly and through its parent) is one run, not two seeds
    assert "1 runs, 1 lines" in invoke("plot", str(run), str(tmp_path), "--out", str(tmp_path / "fig.png")).output

    # --resume with a larger budget continues the run in place
    result = invoke("train", "--resume", str(run), "--frames", "120", "--no-progress")
    assert result.exit_code == 0, result.output
    assert [r["frames"] for r in read_metrics(run / "metrics.csv", "eval")] == [40, 80, 120]


def test_sweep_runs_the_grid_and_skips_finished_runs(tmp_path):
    args = ["sweep", "--tasks", ENV, "--pvr", "none", "--resolution", "36", "--seeds", "2", "--algo", "sac",
            "--frames", "40", "--root", str(tmp_path), "--no-progress", "--set", "eval_every=0",
            "--set", "eval_episodes=1", "--set", "video=false", "--set", "learning_starts=20",
            "--set", "batch_size=8", "--set", "buffer_size=100", "--set", "threads=1"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert [(r["seed"], r["state"], r["frames"]) for r in index] == [(0, "finished", 40), (1, "finished", 40)]
    run_dirs = [tmp_path / r["run_dir"] for r in index]
    assert all(RunStatus.read(d).finished for d in run_dirs)
    result = invoke(*args)
    assert result.exit_code == 0 and "2 already finished, 0 finished now" in result.output
    assert invoke("plot", str(tmp_path), "--out", str(tmp_path / "all.png")).exit_code == 0


def test_params_table():
    result = invoke("params", "--resolution", "112", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["variant"]: r for r in json.loads(result.output)}
    assert set(rows) == {"DrM pixels", "PIE-G ResNet18", "DINOv2", "DINOv2 reg", "VC-1"}
    # CLS-feature agents have no encoder; the pixel agent's DrQ-v2 CNN is trained
    assert rows["DINOv2"]["params"]["encoder"] == 0 < rows["DrM pixels"]["params"]["encoder"]
    # the register tokens make the trunks' input 5x wider (3840 vs 768 per frame)
    assert rows["DINOv2 reg"]["params"]["total"] > rows["DINOv2"]["params"]["total"]
    assert rows["DINOv2"]["params"]["total"] == rows["VC-1"]["params"]["total"]
    # 1M transitions of 112px pixels stored frame by frame: 3*112*112 bytes per transition, roughly
    assert 30 < rows["DrM pixels"]["replay_gb"] < 60 < rows["DrM pixels"]["sb3_replay_gb"]
    # memory storage: the arrays in RAM, two checkpoints of them on disk; disk storage: the files plus two checkpoint
    # intervals of undo journal (2 x 50,000 of 1,000,000 transitions), no RAM
    needs = rows["DrM pixels"]["replay_needs_gb"]
    assert needs["memory"] == {"ram": rows["DrM pixels"]["replay_gb"], "disk": 2 * rows["DrM pixels"]["replay_gb"]}
    assert needs["disk"]["ram"] == 0 and needs["disk"]["disk"] == pytest.approx(1.1 * rows["DrM pixels"]["replay_gb"])
    text = invoke("params", "--resolution", "112").output
    assert "DINOv2 reg" in text and "replay GB" in text
    assert "memory: RAM" in text and "disk: files" in text


def test_bench_lists_and_runs_scripts(tmp_path):
    (tmp_path / "bench_hello.py").write_text('"""Says hello in a table."""\nprint("| hello | 1 |")\n')
    (tmp_path / "bench_fail.py").write_text('"""Fails."""\nraise SystemExit(3)\n')
    listing = invoke("bench", "--dir", str(tmp_path))
    assert listing.exit_code == 0 and "bench_hello  Says hello in a table." in listing.output
    result = CliRunner().invoke(main, ["bench", "--dir", str(tmp_path), "bench_fail"])
    assert result.exit_code == 1 and "failed: bench_fail" in result.output
    result = CliRunner().invoke(main, ["bench", "--dir", str(tmp_path), "nope"])
    assert result.exit_code == 2 and "unknown benchmark 'nope'" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--set", "batch_sise=3"], "batch_sise: unknown config key"),
        (["train", "--algo", "ppo"], "Invalid value for '--algo'"),
        (["train", "--frames", "-5"], "frames: must be a positive integer"),
        (["train", "--algo", "td3", "--set", "expectile=0.9"], "expectile: unknown config key"),
        (["train", "--resume", "/nonexistent/run"], "not a run directory"),
        (["eval", "/nonexistent/run"], "not a run directory"),
        (["plot", "/nonexistent/run"], "does not exist"),
        (["plot", ".", "--out", "fig.txt"], "matplotlib cannot write .txt figures; use .png, .pdf or .svg"),
        (["sweep", "--seeds", "x"], "comma-separated integers"),
        (["sweep", "--set", "resolution=84"], "--set resolution: a grid key, set per run; give it as --resolution"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_bad_config_file_key_is_named_with_the_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("frames: 100\nalgo_kwargs:\n  gama: 0.9\n")
    result = CliRunner().invoke(main, ["train", "--config", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "algo_kwargs.gama" in result.output
    path.write_text("frams: 100\n")
    result = CliRunner().invoke(main, ["train", "--config", str(path)])
    assert result.exit_code == 2 and "cfg.yaml" in result.output and "frams" in result.output


def test_existing_run_directory_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    assert (
        invoke("train", *TINY, "--frames", "30", "--eval-episodes", "1", "--no-video", "--out", str(run)).exit_code == 0
    )
    result = CliRunner().invoke(main, ["train", *TINY, "--out", str(run)])
    assert result.exit_code == 2 and f"pvrw train --resume {run}" in result.output


def test_a_run_whose_setup_fails_can_be_started_again(tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--env", "NoSuchEnv-v9", "--out", str(run), "--no-progress"])
    assert result.exit_code == 2 and "NoSuchEnv" in result.output and "Traceback" not in result.output
    assert not run.exists()  # refused before anything was created
    result = invoke("train", *TINY, "--frames", "20", "--eval-episodes", "1", "--no-video", "--out", str(run))
    assert result.exit_code == 0, result.output


def test_config_errors_are_one_line_and_suggest_the_key(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("frames: [\n")
    result = CliRunner().invoke(main, ["train", "--config", str(broken)])
    assert result.exit_code == 2 and "is not valid YAML at line 2" in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith(("Error", "  "))]
    assert len(error_lines) == 1, result.output
    typo = tmp_path / "typo.yaml"
    typo.write_text("batchsize: 3\n")
    result = CliRunner().invoke(main, ["train", "--config", str(typo)])
    assert result.exit_code == 2 and "did you mean batch_size?" in result.output
    typo.write_text("algo_kwargs:\n  gama: 0.9\n")
    result = CliRunner().invoke(main, ["train", "--config", str(typo)])
    assert result.exit_code == 2 and f"config file {typo}: algo_kwargs.gama" in result.output
    assert "did you mean gamma?" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "bogus"], "device: 'bogus' is not a torch device"),
        (["--pvr", "nosuch"], "pvr: unknown backbone 'nosuch'"),
        (["--pvr", "resnet18", "--weights", "/nonexistent/w.pth"], "weights: /nonexistent/w.pth does not exist"),
    ],
)
def test_bad_run_settings_are_user_errors(tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", *TINY, "--frames", "20", *args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "r" / "config.yaml").exists()


def test_a_named_gpu_is_refused_where_there_is_none(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # SB3 would silently train on the CPU
    result = CliRunner().invoke(main, ["train", *TINY, "--frames", "20", "--device", "cuda", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "CUDA is not available here" in result.output, result.output


def test_missing_weights_are_one_line_that_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PVRW_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = CliRunner().invoke(main, ["train", *TINY, "--frames", "20", "--pvr", "dinov2", "--resolution", "28",
                                       "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert "No weights found for backbone 'dinov2'" in line and "pvrw download dinov2" in line
    assert "--weights PATH" in line and "Looked at" not in result.output


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["--tasks", "push-v3", "--pvr", "none,dino"], "pvr: unknown backbone 'dino'"),
        (["--tasks", "push-v2", "--pvr", "none"], "--tasks push-v2: Meta-World has only -v3 tasks; use push-v3"),
        (["--tasks", "psh-v3", "--pvr", "none"], "Close names: metaworld/push-v3"),
        (["--tasks", "Pendulm-v1", "--pvr", "none"], "close names: Pendulum-v1"),
    ],
)
def test_sweep_refuses_an_unknown_task_or_backbone_before_any_run(tmp_path, grid, message):
    result = CliRunner().invoke(main, ["sweep", *grid, "--resolution", "64", "--seeds", "1", "--root", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not list(tmp_path.iterdir())  # nothing queued, nothing written


def test_sweep_dry_run_says_what_each_run_will_do_and_reads_the_algo_from_the_config(tmp_path):
    config = tmp_path / "sac.yaml"
    config.write_text("algo: sac\nframes: 40\n")
    args = ["sweep", "--tasks", ENV, "--pvr", "none", "--resolution", "36", "--seeds", "1", "--config", str(config),
            "--root", str(tmp_path / "root"), "--dry-run"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if "seed_0" in line]
    assert line.split()[:3] == ["start", "pending", "0/40"] and "sac_none_36" in line
    assert "td3_none_36" in invoke(*args, "--algo", "td3").output  # the option wins over the file


def test_ctrl_c_says_how_to_continue(tmp_path, monkeypatch):
    import pvrw.runs.training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pvrw.runs.training, "run_training", interrupted)
    result = CliRunner().invoke(main, ["train", *TINY, "--out", str(tmp_path / "run")])
    assert result.exit_code == 130 and f"pvrw train --resume {tmp_path / 'run'}" in result.output
    result = CliRunner().invoke(main, ["sweep", "--tasks", ENV, "--pvr", "none", "--resolution", "36", "--seeds", "1",
                                       "--root", str(tmp_path / "sweep")])  # fmt: skip
    assert result.exit_code == 130 and "run the same command again" in result.output


def test_plot_skips_runs_without_metrics_and_refuses_when_none_has_any(tmp_path):
    from pvrw.runs.config import build_config, save_config

    empty = tmp_path / "empty"
    save_config(build_config({"env": ENV}), empty / "config.yaml")  # a run killed before its first episode
    result = CliRunner().invoke(main, ["plot", str(empty), "--out", str(tmp_path / "fig.png")])
    assert result.exit_code == 1 and "no run has metrics yet" in result.output
    assert not (tmp_path / "fig.png").exists()
