"""``pvrw plot``: learning curves of runs, one line per variant: mean +- std or IQM with a bootstrap CI over seeds."""

from __future__ import annotations

from pathlib import Path

import click

from pvrw.cli._common import user_errors


def _expand(paths: tuple[str, ...]) -> list[Path]:
    """Run directories among PATHS; a directory that is not a run is searched for runs below it (a sweep root)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            runs.append(p)
        elif p.is_dir():
            found = sorted(c.parent for c in p.rglob("config.yaml"))
            if not found:
                raise click.UsageError(f"{p} holds no run directory (no config.yaml below it)")
            runs.extend(found)
        else:
            raise click.UsageError(f"{p} does not exist")
    unique = {r.resolve(): r for r in reversed(runs)}  # a run given twice (or inside a given root) counts once
    return [r for r in runs if unique.get(r.resolve()) is r]


def load_runs(run_dirs: tuple[str, ...]) -> list:
    """The runs under RUN_DIRS that have metrics; the others are named on stderr. Refuses when none has any."""
    from pvrw.runs.plotting import load_run

    loaded = [load_run(r) for r in _expand(run_dirs)]
    for empty in (r for r in loaded if not r.rows):
        click.echo(f"skipped (no metrics yet): {empty.root}", err=True)
    runs = [r for r in loaded if r.rows]
    if not runs:
        raise click.ClickException("no run has metrics yet (metrics.csv has no episode); train them first")
    return runs


STAT_OPTION = click.option(
    "--stat",
    type=click.Choice(["mean-std", "iqm"]),
    default="mean-std",
    show_default=True,
    help="Over seeds: mean +- 1 std (the study's), or the interquartile mean with a 95% stratified-bootstrap "
    "confidence interval (Agarwal et al. 2021; percentile method, --reps re-draws).",
)
SUCCESS_OPTION = click.option(
    "--success",
    type=click.Choice(["any-step", "final-step"]),
    default="any-step",
    show_default=True,
    help="Success of an episode: at any step (the DrM code's, Meta-World's) or at its final step (the study's text).",
)
REPS_OPTION = click.option(
    "--reps", type=click.IntRange(min=100), default=50_000, show_default=True, help="Bootstrap re-draws of an IQM CI."
)


def _check_format(out: str) -> None:
    """Refuse a figure file matplotlib cannot write, before any run is read."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(out).suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasBase.get_supported_filetypes()
    if suffix not in supported:
        raise click.BadParameter(
            f"matplotlib cannot write .{suffix} figures; use .png, .pdf or .svg (or {', '.join(sorted(supported))})",
            param_hint="--out",
        )


@click.command("plot", short_help="Learning curves, mean +- std or IQM over seeds.")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", type=click.Path(dir_okay=False), default="plot.png", show_default=True,
              help="Figure file (.png, .pdf, .svg).")  # fmt: skip
@click.option("--title", default=None, help="Figure title.")
@STAT_OPTION
@SUCCESS_OPTION
@click.option("--per-seed", is_flag=True, help="Add a panel per seed: its success and dormant ratio (the study's "
              "Figure 5).")  # fmt: skip
@REPS_OPTION
@user_errors
def plot(
    run_dirs: tuple[str, ...], out: str, title: str | None, stat: str, success: str, per_seed: bool, reps: int
) -> None:
    """Plot RUN_DIRS (run directories, or sweep roots searched for runs) into one figure.

    Runs whose configs differ only by seed are one line: their mean with a shaded band of +-1 std over seeds
    (--stat mean-std), or their IQM with a 95% bootstrap confidence band (--stat iqm).
    Panels: episode reward, success rate and actor dormant ratio against frames, one row per task.
    Evaluation rows are plotted; a run without any uses its training episodes.

    \b
    Examples:
      pvrw plot runs/ -o curves.png
      pvrw plot sweep/ --stat iqm --per-seed --success final-step -o iqm.pdf
    """
    from pvrw.runs.plotting import group_runs, plot_runs

    _check_format(out)
    runs = load_runs(run_dirs)
    path = plot_runs([r.root for r in runs], out, title=title, stat=stat, success=success, per_seed=per_seed, reps=reps)
    groups = group_runs(runs)
    click.echo(f"{len(runs)} runs, {len(groups)} lines -> {path}")
    for g in groups:
        click.echo(f"  {g.env:<28} {g.label:<30} seeds: {sorted(r.config.seed for r in g.runs)}")
