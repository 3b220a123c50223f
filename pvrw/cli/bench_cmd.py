"""``pvrw bench``: list and run the benchmark scripts in benchmarks/ (each prints its own table)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def find_benchmarks(directory: Path) -> dict[str, Path]:
    """Benchmark scripts in ``directory``: ``name -> path`` for every ``*.py`` not starting with ``_``."""
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.glob("*.py")) if not p.name.startswith("_")}


def summary(path: Path) -> str:
    """First paragraph of a script's module docstring, on one line ('' if none)."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text()))
    except SyntaxError:
        return "(does not parse)"
    return " ".join(doc.strip().split("\n\n")[0].split()) if doc else ""


@click.command(
    "bench", short_help="List or run the benchmark scripts.", context_settings={"ignore_unknown_options": True}
)
@click.argument("names", nargs=-1)
@click.option("--all", "run_all", is_flag=True, help="Run every benchmark, one after another.")
@click.option("--list", "list_only", is_flag=True, help="List the benchmarks and exit (also what no NAME does).")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DIR,
              show_default=True, help="Directory of the benchmark scripts.")  # fmt: skip
@click.option("--arg", "args", multiple=True, metavar="ARG", help="Argument passed to each script (repeatable).")
def bench(names: tuple[str, ...], run_all: bool, list_only: bool, directory: Path, args: tuple[str, ...]) -> None:
    """Run the benchmarks NAMES (scripts in benchmarks/, which print their tables); no NAME lists them.

    Figures are measured, side by side in one run of a script, on this machine: the numbers are only comparable
    within one table.
    """
    found = find_benchmarks(directory)
    if not found:
        raise click.ClickException(f"no benchmark scripts in {directory}")
    if list_only or (not names and not run_all):
        width = max(map(len, found))
        for name, path in found.items():
            click.echo(f"{name:<{width}}  {summary(path)}")
        click.echo("\nrun one with `pvrw bench NAME`, or all with `pvrw bench --all`")
        return
    unknown = [n for n in names if n.removesuffix(".py") not in found]
    if unknown:
        raise click.UsageError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(found)}")
    selected = list(found) if run_all else [n.removesuffix(".py") for n in names]
    failed = []
    for name in selected:
        click.echo(f"== {name}: {summary(found[name])}")
        code = subprocess.call([sys.executable, str(found[name]), *args])
        if code != 0:
            failed.append(name)
            click.echo(f"== {name} exited with status {code}", err=True)
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)}")
