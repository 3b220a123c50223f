"""``pvrw train``: one training run, written to a self-describing run directory, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pvrw.cli._backbone_options import backbone_options, to_config_keys
from pvrw.cli._common import (
    ALGO_CHOICE,
    REPLAY_STORAGE_HELP,
    config_layers,
    config_options,
    lock_note,
    user_errors,
)
from pvrw.runs.config import REPLAY_STORAGES, RunConfig, build_config, load_config

_D = RunConfig()  # the study's defaults, quoted in the help


@click.command("train", short_help="Train an agent into a run directory.", context_settings={"show_default": False})
@click.option("--algo", type=ALGO_CHOICE, default=None, help=f"Algorithm: DrM or SB3's SAC/TD3. [default: {_D.algo}]")
@click.option(
    "--env",
    default=None,
    help=f"Task: metaworld/<task-v3> (pixels via pvrw.make_env) or a Gymnasium id. [default: {_D.env}]",
)
@click.option(
    "--pvr",
    default=None,
    help="Observation: 'none' (pixels, the agent trains its own CNN) or a frozen backbone: resnet18, dinov2, "
    f"dinov2_reg, vc1 (see `pvrw backbones`). [default: {_D.pvr}]",
)
@click.option("--resolution", type=int, default=None, help=f"Rendered image side in pixels. [default: {_D.resolution}]")
@click.option("--seed", type=int, default=None, help=f"Seed of the agent and env. [default: {_D.seed}]")
@click.option(
    "--frames",
    type=int,
    default=None,
    help=f"Budget in environment frames = agent steps x action repeat (rounded up to a whole agent step). "
    f"[default: {_D.frames:,}]",
)
@click.option(
    "--frame-stack", type=int, default=None, help=f"Stacked frames per observation. [default: {_D.frame_stack}]"
)
@click.option(
    "--action-repeat", type=int, default=None, help=f"Simulator steps per agent step. [default: {_D.action_repeat}]"
)
@click.option(
    "--weights",
    default=None,
    help="Backbone weights: a file, or 'random' (smoke tests only, NOT a pretrained representation). "
    "[default: the pretrained weights, found as `pvrw backbones` reports]",
)
@click.option("--device", default=None, help=f"Torch device: auto, cpu, cuda, cuda:1... [default: {_D.device}]")
@click.option("--threads", type=int, default=None, help="Torch CPU threads, 0 for torch's default; 1 is much faster "
              "on a CPU shared with other jobs. [default: 0]")  # fmt: skip
@click.option("--policy", default=None, help="Policy class name. [default: CnnPolicy on pixels, PiegPolicy on "
              "resnet18 maps (DrM), PatchPolicy on ViT patch maps, FinetunePolicy with --finetune, MlpPolicy on "
              "features]")  # fmt: skip
@backbone_options()
@click.option(
    "--eval-every",
    type=int,
    default=None,
    help=f"Evaluate every N frames (0: at the end only). [default: {_D.eval_every:,}]",
)
@click.option("--eval-episodes", type=int, default=None, help=f"Episodes per evaluation. [default: {_D.eval_episodes}]")
@click.option(
    "--checkpoint-every",
    type=int,
    default=None,
    help=f"Save model + replay buffer every N frames (0: at the end only). [default: {_D.checkpoint_every:,}]",
)
@click.option("--video/--no-video", default=None, help="Record the first episode of each evaluation. [default: video]")
@click.option("--replay-storage", type=click.Choice(REPLAY_STORAGES), default=None, help=REPLAY_STORAGE_HELP)
# algorithm arguments with an option of their own (the rest through --set); they go into algo_kwargs
@click.option("--variant", type=click.Choice(["drm", "drm_mw", "drqv2"]), default=None, help="DrM variant: the "
              "original agent (drm, the study's), the Meta-World rewrite (drm_mw), or the DrQ-v2 baseline (drqv2: no "
              "dormant-ratio mechanisms), each with its reference hyper-parameters. [default: drm]")  # fmt: skip
@click.option("--batch-size", type=int, default=None, help="Minibatch size. [default: the algorithm's; DrM 256]")
@click.option("--learning-rate", type=float, default=None, help="Learning rate. [default: the algorithm's; DrM 1e-4]")
@click.option(
    "--buffer-size", type=int, default=None, help="Replay buffer capacity (transitions). [default: 1,000,000]"
)
@click.option("--learning-starts", type=int, default=None, help="Agent steps before the first update. [default: the "
              "algorithm's; DrM 2000]")  # fmt: skip
@config_options()
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory to create: a new or empty folder (a folder of other files is refused; one that holds a run "
    "needs --resume or --overwrite). While a run trains, its folder is locked: a second train, --resume, eval or "
    "sweep on it is refused, naming the process that holds it. "
    "[default: runs/<task>/<algo>_<pvr>_<resolution>/seed_<seed>]",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Start again in an --out folder that holds a run: first delete the files pvrw wrote there (config.yaml, "
    "status.json, metrics.csv, tb/, checkpoints/, replay/, plot.png, eval.json, its eval_*.mp4 videos), and nothing "
    "else.",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False),
    default=None,
    help="Continue the run in this directory from its last checkpoint (model, replay buffer, step count; "
    "metrics.csv is cut back to the checkpoint). Options may change its budget, evaluation and device.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar. [default: progress]")
@user_errors
def train(
    config_file: str | None,
    preset: str | None,
    set_items: tuple[str, ...],
    out: str | None,
    overwrite: bool,
    resume: str | None,
    progress: bool,
    **options: Any,
) -> None:
    """Train an agent on pixels or on frozen pretrained features, writing a run directory.

    The run directory holds config.yaml (the resolved configuration), metrics.csv (one row per training episode
    and per evaluation: reward, success at any step and at the final step, dormant ratio, frames, wall time),
    TensorBoard events (tb/), checkpoints/ (model + replay buffer), videos/ and plot.png. Defaults are the
    study's settings; precedence is defaults < --preset < --config < options < --set.

    \b
    Examples:
      pvrw train --env metaworld/push-v3 --pvr dinov2 --resolution 224 --seed 1
      pvrw train --pvr dinov2 --tokens mean --layers -1,-2,-3,-4
      pvrw train --pvr dinov2 --finetune lora:8 --backbone-lr 1e-5   # fine-tuned inside DrM, pixels in the replay
      pvrw train --preset smoke --out runs/smoke          # a few CPU minutes, end to end
      pvrw train --resume runs/smoke --frames 6000        # continue (or extend) a run
    """
    from pvrw.runs.envs import check_run_setup

    layers, names = config_layers(config_file, to_config_keys(options), set_items)
    if resume:
        run_dir = Path(resume)
        if out is not None and Path(out) != run_dir:
            raise click.UsageError("--out and --resume name different directories; --resume continues in place")
        if overwrite:
            raise click.UsageError("--overwrite starts a run again and --resume continues it; give one of them")
        if preset is not None:
            raise click.UsageError("--preset applies to new runs only; a resumed run keeps its config.yaml")
        if not (run_dir / "config.yaml").is_file():
            raise click.UsageError(f"--resume {resume}: not a run directory (no config.yaml); start it with --out")
    else:
        notes: list[str] = []
        config = build_config(*layers, preset=preset, layer_names=names, notes=notes)
        for note in notes:
            click.echo(note)
        from pvrw.runs.sweep import run_dir_name

        run_dir = Path(out) if out else Path("runs") / run_dir_name(config)
        check_run_setup(config)  # before anything is printed or created (the lock creates the directory)
    from pvrw.runs.lock import run_lock
    from pvrw.runs.training import run_training

    # locked before looking at the directory, so that a second command on it is told who uses it
    with run_lock(run_dir, note=lock_note):
        if resume:
            config = build_config(
                load_config(run_dir / "config.yaml").to_dict(), *layers, layer_names=["config.yaml", *names]
            )
            check_run_setup(config)
        else:
            _check_new_run_dir(run_dir, overwrite)
        _announce(config, run_dir, resumed=bool(resume))
        try:
            status = run_training(config, run_dir, progress=progress)
        except KeyboardInterrupt:
            click.echo(f"interrupted; continue from the last checkpoint with: pvrw train --resume {run_dir}", err=True)
            raise SystemExit(130) from None
    click.echo(f"finished {status.frames:,} frames in {status.wall_time:.0f} s of training -> {run_dir}")
    _summary(run_dir)


def _check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a folder of the user's files, and one that holds a run unless ``--overwrite`` (then clear pvrw's)."""
    from pvrw.runs.layout import RunDir, RunStatus, check_run_dir, remove_run_files

    rd = RunDir(run_dir)
    check_run_dir(rd)
    if not rd.config.is_file():  # empty, or a run whose setup failed: nothing to lose
        return
    if not overwrite:
        raise click.UsageError(
            f"{run_dir} already holds a run; continue it with `pvrw train --resume {run_dir}`, start it again with "
            "--overwrite (deletes only the files pvrw wrote there), or choose another --out"
        )
    removed = remove_run_files(rd)
    RunStatus().write(rd)  # still a pvrw run directory (the user's files there are kept)
    click.echo(f"--overwrite: deleted {len(removed)} files and folders pvrw wrote in {run_dir}")


def _announce(config: RunConfig, run_dir: Path, resumed: bool) -> None:
    what = f"{config.algo} on {config.env} ({'pixels' if config.pvr == 'none' else config.pvr}) @{config.resolution}"
    click.echo(
        f"{'resuming' if resumed else 'training'} {what}, seed {config.seed}, {config.frames:,} frames -> {run_dir}"
    )


def _summary(run_dir: Path) -> None:
    from pvrw.runs.metrics import read_metrics

    evals = read_metrics(run_dir / "metrics.csv", kind="eval")
    if not evals:
        return
    last = evals[-1]
    parts = [f"reward {last['reward']:.1f}"]
    if last.get("success") is not None:
        parts.append(f"success any-step {last['success']:.2f}, final-step {last['success_final']:.2f}")
    if last.get("dormant_ratio") is not None:
        parts.append(f"dormant ratio {last['dormant_ratio']:.3f}")
    click.echo(f"last evaluation ({last['episodes']} episodes at {last['frames']:,} frames): " + "; ".join(parts))
