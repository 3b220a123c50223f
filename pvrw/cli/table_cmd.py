"""``pvrw table``: one row per configuration of a sweep (or any runs): success, reward, dormant ratio, cost."""

from __future__ import annotations

from pathlib import Path

import click

from pvrw.cli._common import user_errors
from pvrw.cli.plot_cmd import REPS_OPTION, SUCCESS_OPTION, load_runs


@click.command("table", short_help="One row per configuration: success, reward, dormant ratio, cost.")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "json"]), default="markdown", show_default=True,
              help="Output format.")  # fmt: skip
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Write the table to this file "
              "instead of printing it.")  # fmt: skip
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Success rate whose first crossing gives the 'frames to success' column.")  # fmt: skip
@SUCCESS_OPTION
@REPS_OPTION
@user_errors
def table(run_dirs: tuple[str, ...], fmt: str, out: str | None, threshold: float, success: str, reps: int) -> None:
    """Summarise RUN_DIRS (run directories, or sweep roots searched for runs): one row per configuration.

    Runs whose configs differ only by seed make one row. Columns: final success and reward (the last evaluation)
    as mean +- std and as IQM with a 95% stratified-bootstrap CI over seeds; the median frame at which success
    first reaches --threshold (and how many seeds reached it); peak and final actor dormant ratio; trainable
    parameters (targets excluded); replay memory at full capacity; gradient updates per second of training
    wall time. Then Spearman's correlation between final dormant ratio and final success (the study's), and final
    reward, over all runs.

    \b
    Examples:
      pvrw table sweep/
      pvrw table sweep/ --format csv -o results.csv --success final-step
    """
    from pvrw.runs.layout import atomic_write_text
    from pvrw.runs.plotting import group_runs
    from pvrw.runs.table import dormant_correlation, format_table, table_rows

    runs = load_runs(run_dirs)
    rows, summaries = table_rows(group_runs(runs), success=success, threshold=threshold, reps=reps)
    text = format_table(rows, fmt)
    if out:
        atomic_write_text(Path(out), text)
        click.echo(f"{len(rows)} configurations, {len(runs)} runs -> {out}")
    else:
        click.echo(text, nl=False)
    err = fmt != "markdown" and not out  # keep CSV / JSON on stdout parseable
    for other, what in (("success", f"final {success} success"), ("reward", "final reward")):
        rho, p, n = dormant_correlation(summaries, other)
        where = f"{n} runs" if n == len(runs) else f"{n} of {len(runs)} runs (the others lack one of the two)"
        if n == 0:
            line = f"no run has both a final dormant ratio and a {what}"
        elif n < 3 or rho != rho:  # NaN: too few runs, or one variable constant
            line = f"not defined over {where}"
        else:
            line = f"{rho:+.3f}" + (f", p = {p:.3g}" if p is not None else "") + f" over {where}"
        click.echo(f"Spearman rho, final dormant ratio vs {what}: {line}", err=err)
