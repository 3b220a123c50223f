"""The study's figures: mean over seeds with a shaded +-std band, against frames, one line per variant.

Runs are grouped by their resolved config minus the seed (:meth:`RunConfig.group_key`), so two runs only
average together when they were trained identically. Evaluation rows are plotted when a run has them,
otherwise training episodes.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pvrw.runs.config import RunConfig, load_config
from pvrw.runs.layout import RunDir, atomic_write_bytes
from pvrw.runs.metrics import read_metrics

#: (metrics column, axis label) of the figure's columns
PANELS: tuple[tuple[str, str], ...] = (
    ("reward", "episode reward"),
    ("success", "success rate (any step)"),
    ("dormant_ratio", "actor dormant ratio"),
)


@dataclass
class RunCurves:
    """One run's config and its metric rows (eval rows if any, else train rows)."""

    root: Path
    config: RunConfig
    kind: str
    rows: list[dict[str, Any]]


@dataclass
class Group:
    """Runs with the same config except the seed."""

    label: str
    env: str
    runs: list[RunCurves] = field(default_factory=list)


def load_run(run_dir: str | os.PathLike) -> RunCurves:
    """Read a run directory's config and metrics.

    :raises FileNotFoundError: if it is not a run directory (no config.yaml).
    """
    rd = RunDir(run_dir)
    if not rd.config.is_file():
        raise FileNotFoundError(f"{rd.root} is not a run directory (no config.yaml)")
    config = load_config(rd.config)
    rows = read_metrics(rd.metrics, kind="eval")
    kind = "eval"
    if not rows:
        rows, kind = read_metrics(rd.metrics, kind="train"), "train"
    return RunCurves(rd.root, config, kind, rows)


def group_runs(runs: list[RunCurves]) -> list[Group]:
    """Group runs that differ only by seed; label each group by what differs between groups."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = run.config.group_key()
        groups.setdefault(key, Group(label=run.config.variant, env=run.config.env)).runs.append(run)
    result = list(groups.values())
    # two groups with the same short label differ in some other setting: disambiguate by number
    seen: dict[tuple[str, str], int] = {}
    for group in result:
        n = seen[(group.env, group.label)] = seen.get((group.env, group.label), 0) + 1
        if n > 1:
            group.label = f"{group.label} (config {n})"
    return result


def mean_std(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of curves sampled at possibly different frames.

    Each curve is interpolated onto the union of all frames, within its own range only (no extrapolation).
    :return: ``(frames, mean, std, count)`` where ``count`` is how many seeds cover each frame.
    """
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    values = np.full((len(curves), len(grid)), np.nan)
    for i, (x, y) in enumerate(curves):
        inside = (grid >= x.min()) & (grid <= x.max())
        values[i, inside] = np.interp(grid[inside], x, y)
    count = np.sum(~np.isnan(values), axis=0)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns no seed covers: NaN, on purpose
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
    return grid, mean, std, count


def _curve(run: RunCurves, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    points = [(r["frames"], r[column]) for r in run.rows if r.get(column) is not None]
    if not points:
        return None
    x, y = np.array(points, dtype=float).T
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike, title: str | None = None) -> Path:
    """Plot runs (one line per config group, mean +-std over seeds) to ``out`` (png, pdf, svg...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(d) for d in run_dirs]
    groups = group_runs(runs)
    envs = sorted({g.env for g in groups})
    panels = [p for p in PANELS if any(_curve(r, p[0]) for g in groups for r in g.runs)] or [PANELS[0]]
    fig, axes = plt.subplots(
        len(envs), len(panels), figsize=(4.2 * len(panels), 3.2 * len(envs)), squeeze=False, constrained_layout=True
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, env in enumerate(envs):
        for col, (column, label) in enumerate(panels):
            ax = axes[row][col]
            for i, group in enumerate(g for g in groups if g.env == env):
                curves = [c for c in (_curve(r, column) for r in group.runs) if c is not None]
                if not curves:
                    continue
                frames, mean, std, _ = mean_std(curves)
                color = colors[i % len(colors)]
                ax.plot(frames, mean, color=color, label=f"{group.label} (n={len(group.runs)})")
                ax.fill_between(frames, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
            ax.set_xlabel("frames")
            kinds = {r.kind for g in groups for r in g.runs if g.env == env}
            ax.set_ylabel(label if kinds == {"eval"} else f"{label} ({'/'.join(sorted(kinds))})")
            ax.set_title(env, fontsize=9)
            ax.grid(alpha=0.3)
            if column.startswith("success") or column == "dormant_ratio":
                ax.set_ylim(-0.02, 1.02)
        axes[row][0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=out.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out
