"""``pvrw sweep``: the study's grid as a queue of independent runs, skipping finished ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pvrw.cli._backbone_options import backbone_options, sweep_axes
from pvrw.cli._common import ALGO_CHOICE, REPLAY_STORAGE_HELP, config_layers, config_options, user_errors
from pvrw.runs.config import REPLAY_STORAGES


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(name: str, value: str) -> list[int]:
    try:
        return [int(v) for v in _split(value)]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=name) from None


@click.command("sweep", short_help="Run a grid of runs, skipping finished ones.")
@click.option("--tasks", default="push-v3,drawer-open-v3", show_default=True,
              help="Comma-separated tasks (Meta-World names, or full env ids).")  # fmt: skip
@click.option("--pvr", "pvrs", default="all", show_default=True,
              help="Comma-separated observation variants, or 'all' = none,resnet18,dinov2,dinov2_reg,vc1.")  # fmt: skip
@click.option("--resolution", "resolutions", default="112,224", show_default=True, help="Comma-separated resolutions.")
@click.option("--seeds", default="5", show_default=True,
              help="Number of seeds (0..N-1), or a comma-separated list of seeds (e.g. '3,4').")  # fmt: skip
@click.option("--algo", type=ALGO_CHOICE, default=None, help="Algorithm of every run. [default: --config's, else drm]")
@click.option("--frames", type=int, default=None, help="Budget of every run in frames. [default: the study's]")
@click.option("--weights", default=None, help="Backbone weights for every PVR run ('random': smoke tests only).")
@click.option("--device", default=None, help="Torch device of every run. [default: auto]")
@click.option("--replay-storage", type=click.Choice(REPLAY_STORAGES), default=None, help=REPLAY_STORAGE_HELP)
@backbone_options(sweep=True)
@click.option("--axis", "axis_items", multiple=True,
              help="Another grid axis: KEY=V1;V2;... over any config key (e.g. --axis batch_size=128;256). "
              "Values are read as YAML.")  # fmt: skip
@config_options("Applies to every run; the grid keys (task, pvr, resolution, seed) are set per run.")
@click.option("--root", type=click.Path(file_okay=False), default="runs/sweep", show_default=True,
              help="Directory of the sweep: ROOT/<task>/<algo>_<pvr>_<res>/seed_<n>, and ROOT/sweep.json.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="List the runs and their status; train nothing.")
@click.option("--keep-going/--stop-on-error", default=True, show_default=True,
              help="After a failed run, go on with the next one, or stop.")  # fmt: skip
@click.option("--progress/--no-progress", default=True, help="Show a progress bar per run. [default: progress]")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help='local: one run after another in this process; ray: every run a Ray Tune trial (pip install "pvrw[ray]").')  # fmt: skip
@click.option("--address", default=None,
              help="--backend ray: 'auto' (the Ray cluster of this machine) or ray://HOST:PORT. [default: a new local Ray instance]")  # fmt: skip
@click.option("--gpus-per-run", type=click.FloatRange(min=0), default=0, show_default=True,
              help="--backend ray: GPUs reserved per run (a fraction shares a GPU between runs).")  # fmt: skip
@click.option("--cpus-per-run", type=click.FloatRange(min=0), default=1, show_default=True,
              help="--backend ray: CPUs reserved per run.")  # fmt: skip
@click.option("--max-failures", type=click.IntRange(min=0), default=3, show_default=True,
              help="--backend ray: restarts of a run whose worker died; each resumes from its last checkpoint.")  # fmt: skip
@user_errors
def sweep(
    tasks: str,
    pvrs: str,
    resolutions: str,
    seeds: str,
    algo: str | None,
    config_file: str | None,
    preset: str | None,
    set_items: tuple[str, ...],
    root: str,
    dry_run: bool,
    keep_going: bool,
    progress: bool,
    backend: str,
    address: str | None,
    gpus_per_run: float,
    cpus_per_run: float,
    max_failures: int,
    axis_items: tuple[str, ...],
    **options: Any,
) -> None:
    """Run a grid of tasks x observation variants x resolutions x seeds: a queue here, or Ray Tune trials.

    Each cell is an ordinary run directory (so `pvrw plot ROOT` and `pvrw eval` work on it). Finished runs are
    skipped and unfinished ones resume from their last checkpoint, so re-running the same command after a crash
    or a kill completes the grid. A run whose directory another process uses (locked) is left to it. ROOT/sweep.json
    lists every run with its status.

    With --backend ray every unfinished run is a Ray Tune trial, on a local Ray instance or on the cluster at
    --address (ROOT must then be on a filesystem all nodes share); a trial whose worker dies is restarted and
    resumes from its last checkpoint.

    \b
    Examples:
      pvrw sweep --dry-run                                   # the study's 100 runs and their status
      pvrw sweep --tasks push-v3 --pvr none,resnet18 --resolution 112 --seeds 3 --frames 100000
      pvrw sweep --preset smoke --pvr none --seeds 2 --root runs/smoke_sweep   # CPU minutes per run
      pvrw sweep --pvr dinov2 --tokens cls,mean --finetune none,last2     # readouts x fine-tuning axes
      pvrw sweep --backend ray --address auto --gpus-per-run 0.5             # on a Ray cluster
    """
    from pvrw.runs.layout import RunDir, RunStatus
    from pvrw.runs.sweep import STUDY_PVRS, expand_grid, run_local, write_index

    pvr_list = list(STUDY_PVRS) if pvrs.strip() == "all" else _split(pvrs)
    seed_values = _ints("--seeds", seeds)
    seed_list = list(range(seed_values[0])) if len(seed_values) == 1 and "," not in seeds else seed_values
    if not seed_list:
        raise click.BadParameter("no seeds", param_hint="--seeds")
    axes = sweep_axes(options)
    for item in axis_items:
        from pvrw.runs.config import parse_override

        key, _ = parse_override(item)
        axes[key] = [parse_override(f"{key}={v}")[1] for v in item.split("=", 1)[1].split(";") if v.strip()]
    layers, _ = config_layers(config_file, options, set_items)
    grid_options = {"env": "--tasks", "pvr": "--pvr", "resolution": "--resolution", "seed": "--seeds"}
    # --set would be silently replaced by the grid's value
    for key in (grid_options.keys() | axes.keys()) & layers[-1].keys():
        raise click.UsageError(f"--set {key}: a grid key, set per run; give it as {grid_options.get(key, '--axis')}")
    base: dict[str, Any] = {}
    for layer in layers:
        base.update(layer)
    runs = expand_grid(
        root,
        _split(tasks),
        pvr_list,
        _ints("--resolution", resolutions),
        seed_list,
        algo=algo,
        base=base,
        preset=preset,
        axes=axes,
    )
    if not runs:
        raise click.UsageError("the grid is empty: give at least one task, pvr, resolution and seed")
    if dry_run:
        click.echo(f"{'next':<7} {'state':<9} {'frames':>21}  run directory")
        for run in runs:
            status = RunStatus.read(RunDir(run.run_dir))
            if status.finished and status.frames >= run.config.frames:
                action = "skip"
            else:
                action = "resume" if status.frames else "start"  # frames: those of its last checkpoint
            click.echo(f"{action:<7} {status.state:<9} {status.frames:>10,}/{run.config.frames:<10,} {run.run_dir}")
        if Path(root).is_dir():
            write_index(root, runs)
        click.echo(f"{len(runs)} runs")
        return

    def report(run, event: str) -> None:
        words = {
            "skip": "skip (finished)",
            "start": "run",
            "done": "done",
            "fail": "FAILED",
            "retry": "restart (worker lost)",
            "busy": "in use by another process, left to it",
        }
        click.echo(f"[{words[event]}] {run.run_dir}")

    if backend == "ray":
        from pvrw.runs.ray_backend import RayNotInstalledError, RayResourceError, run_ray

        try:
            counts = run_ray(runs, root, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                             max_failures=max_failures, on_run=report)  # fmt: skip
        except (RayNotInstalledError, RayResourceError, ConnectionError) as err:
            raise click.ClickException(str(err)) from None
    elif address is not None or gpus_per_run:
        raise click.UsageError("--address and --gpus-per-run need --backend ray")
    else:
        try:
            counts = run_local(runs, root, progress=progress, stop_on_error=not keep_going, on_run=report)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to skip finished runs and resume the others", err=True)
            raise SystemExit(130) from None
    busy = f", {counts['busy']} in use by another process (left to it)" if counts.get("busy") else ""
    click.echo(
        f"{len(runs)} runs: {counts['skipped']} already finished, {counts['finished']} finished now, "
        f"{counts['failed']} failed{busy}; index: {Path(root) / 'sweep.json'}"
    )
    if counts["failed"]:
        raise SystemExit(1)
