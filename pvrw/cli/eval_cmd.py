"""``pvrw eval``: evaluate a run's latest checkpoint on deterministic evaluation tasks."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pvrw.cli._common import lock_note, user_errors


@click.command("eval", short_help="Evaluate a run's latest checkpoint.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--episodes", type=click.IntRange(min=1), default=10, show_default=True, help="Evaluation episodes.")
@click.option(
    "--video/--no-video", default=False, show_default=True, help="Record the first episode to RUN_DIR/videos/."
)
@click.option(
    "--deterministic/--stochastic",
    default=True,
    show_default=True,
    help="Act with the policy's mean action (as DrM evaluates) or sample it.",
)
@click.option("--device", default=None, help="Torch device. [default: the run's]")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@user_errors
def eval_(run_dir: str, episodes: int, video: bool, deterministic: bool, device: str | None, as_json: bool) -> None:
    """Evaluate RUN_DIR's latest checkpoint: reward, and success at any step and at the final step.

    Meta-World evaluation envs cycle through the 50 fixed MT1 object/goal configurations (make_env
    goal_mode="fixed"), restarted by a seeded first reset, so every evaluation of a run sees the same tasks in the
    same order (as the periodic evaluations during training do). Success at any step is Meta-World's official
    criterion; success at the final step is the stricter one. The result is also written to RUN_DIR/eval.json.
    RUN_DIR is locked meanwhile: it is refused while a training (or another eval) uses it.
    """
    from pvrw.runs.lock import run_lock

    if not (Path(run_dir) / "config.yaml").is_file():
        raise click.UsageError(f"{run_dir} is not a run directory (no config.yaml)")
    with run_lock(run_dir, note=lock_note):
        _evaluate(run_dir, episodes, video, deterministic, device, as_json)


def _evaluate(run_dir: str, episodes: int, video: bool, deterministic: bool, device: str | None, as_json: bool) -> None:
    """The evaluation itself, run holding the lock of ``run_dir``."""
    from pvrw.drm.saved import check_model_zip
    from pvrw.runs.checkpoint import latest_checkpoint
    from pvrw.runs.config import load_algo_class, load_config
    from pvrw.runs.envs import EVAL_SEED_OFFSET, make_backbone, make_run_env, resolve_device
    from pvrw.runs.evaluation import evaluate
    from pvrw.runs.layout import RunDir, atomic_write_json

    rd = RunDir(run_dir)
    config = load_config(rd.config)
    if device is not None:
        config.device = device
    info = latest_checkpoint(rd)
    if info is None:
        raise click.ClickException(
            f"{run_dir} has no checkpoint yet (checkpoints/latest.json); train it: pvrw train --resume {run_dir}"
        )
    algo_class = load_algo_class(config.algo)
    model_file = check_model_zip(rd.checkpoints / info.dir / "model.zip", algo_class)  # damaged: one line, early
    env = make_run_env(config, evaluation=True, record_frames=video, backbone=make_backbone(config))
    try:
        model = algo_class.load(model_file, device=resolve_device(config.device))
        video_path = rd.videos / f"eval_cli_{info.frames:010d}.mp4" if video else None
        result = evaluate(
            model,
            env,
            episodes,
            deterministic=deterministic,
            video_path=video_path,
            seed=config.seed + EVAL_SEED_OFFSET,
        )
    finally:
        env.close()
    record = {"run_dir": str(rd.root), "frames": info.frames, "checkpoint": info.dir, "deterministic": deterministic}
    record.update(result.to_dict())
    atomic_write_json(rd.eval_result, record)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return

    def pct(value: float | None) -> str:
        return "n/a (env reports no success)" if value is None else f"{value:.2f}"

    click.echo(f"{rd.root}  checkpoint at {info.frames:,} frames, {episodes} episodes")
    click.echo(f"  episode reward           {result.reward:10.2f} +- {result.reward_std:.2f}")
    click.echo(f"  success (any step)       {pct(result.success):>10}")
    click.echo(f"  success (final step)     {pct(result.success_final):>10}")
    click.echo(f"  episode length           {result.length:10.1f} agent steps")
    if video_path is not None and Path(video_path).is_file():
        click.echo(f"  video: {video_path}")
