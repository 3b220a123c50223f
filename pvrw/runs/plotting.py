"""The study's figures: one line per variant against frames, mean over seeds with a shaded +-std band (the study's)
or the IQM with a 95 % stratified-bootstrap band (:mod:`pvrw.runs.statistics`), optionally each seed's own panel.

Runs are grouped by their resolved config minus the seed (:meth:`RunConfig.group_key`), so two runs only
average together when they were trained identically. Evaluation rows are plotted when a run has them,
otherwise training episodes.
"""

from __future__ import annotations

import inspect
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pvrw.runs.config import RunConfig, load_config
from pvrw.runs.layout import RunDir, atomic_write_bytes
from pvrw.runs.metrics import read_metrics
from pvrw.runs.statistics import REPS, aggregate_curves

#: (metrics column, axis label) of the figure's columns
PANELS: tuple[tuple[str, str], ...] = (
    ("reward", "episode reward"),
    ("success", "success rate (any step)"),
    ("dormant_ratio", "actor dormant ratio"),
)
#: ``--success`` choices -> (metrics column, label): any step of the episode (the DrM code's, Meta-World's official
#: criterion) or its final step (the study's text)
SUCCESS: dict[str, tuple[str, str]] = {
    "any-step": ("success", "success rate (any step)"),
    "final-step": ("success_final", "success rate (final step)"),
}
STAT_NOTES = {
    "mean-std": "mean over seeds, band +-1 std",
    "iqm": "IQM over seeds, band 95% stratified-bootstrap CI",
}


def panels(success: str = "any-step") -> tuple[tuple[str, str], ...]:
    """The figure's columns with the chosen success definition."""
    if success not in SUCCESS:
        raise ValueError(f"unknown success definition {success!r}; choose one of {', '.join(SUCCESS)}")
    return tuple(SUCCESS[success] if column == "success" else (column, label) for column, label in PANELS)


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


def _settings(config: RunConfig) -> dict[str, Any]:
    """A config's training settings as flat ``key: value`` (``algo_kwargs`` entries by their own name)."""
    flat = yaml.safe_load(config.group_key())
    for key in ("algo_kwargs", "env_kwargs", "pvr_kwargs"):
        for name, value in (flat.pop(key) or {}).items():
            flat[name if key == "algo_kwargs" else f"{key}.{name}"] = value
    return flat


def group_runs(runs: list[RunCurves]) -> list[Group]:
    """Group runs that differ only by seed; label each group by what differs between groups.

    Groups of one task with the same ``algo/pvr@resolution`` label get the settings they differ in appended
    (``drm/none@112 redo_interval=1000``).
    """
    groups: dict[str, Group] = {}
    for run in runs:
        key = run.config.group_key()
        groups.setdefault(key, Group(label=run.config.variant, env=run.config.env)).runs.append(run)
    result = list(groups.values())
    clashes: dict[tuple[str, str], list[Group]] = {}
    for group in result:
        clashes.setdefault((group.env, group.label), []).append(group)
    for same in (g for g in clashes.values() if len(g) > 1):
        settings = [_settings(g.runs[0].config) for g in same]
        keys = sorted({k for s in settings for k in s if any(s.get(k) != t.get(k) for t in settings)})
        for group, setting in zip(same, settings):
            shown = [f"{k}={setting[k]}" for k in keys if k in setting]
            group.label = f"{group.label} {', '.join(shown)}" if shown else f"{group.label} (defaults)"
    return result


def mean_std(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of curves sampled at possibly different frames.

    Each curve is interpolated onto the union of all frames, within its own range only (no extrapolation).
    :return: ``(frames, mean, std, count)`` where ``count`` is how many seeds cover each frame.
    """
    grid, mean, low, _, count = aggregate_curves(curves, "mean-std")
    return grid, mean, mean - low, count


def learning_starts(config: RunConfig) -> int:
    """Agent steps before the first update (the config's ``learning_starts``, else the algorithm's default)."""
    if "learning_starts" in config.algo_kwargs:
        return int(config.algo_kwargs["learning_starts"])
    from pvrw.runs.config import load_algo_class

    default = inspect.signature(load_algo_class(config.algo).__init__).parameters.get("learning_starts")
    return int(default.default) if default is not None and isinstance(default.default, int) else 0


def _curve(run: RunCurves, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    # Before its first update DrM reports its initial dormant ratio, 1.0, not a measurement: left out.
    starts = learning_starts(run.config) if column == "dormant_ratio" else -1
    points = [(r["frames"], r[column]) for r in run.rows if r.get(column) is not None and r["steps"] > starts]
    if not points:
        return None
    x, y = np.array(points, dtype=float).T
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def plot_runs(
    run_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    title: str | None = None,
    stat: str = "mean-std",
    success: str = "any-step",
    per_seed: bool = False,
    reps: int = REPS,
) -> Path:
    """
    Plot runs, one line per config group, to ``out`` (png, pdf, svg...).

    :param stat: ``"mean-std"`` (mean, band +-1 std over seeds) or ``"iqm"`` (IQM, band 95 % stratified-bootstrap CI)
    :param success: ``"any-step"`` or ``"final-step"`` success (metrics columns ``success`` / ``success_final``)
    :param per_seed: add one panel per seed and group below: its success and dormant ratio (the study's Figure 5)
    :param reps: bootstrap re-draws per point of an IQM band
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(d) for d in run_dirs]
    groups = group_runs(runs)
    envs = sorted({g.env for g in groups})
    columns = panels(success)
    shown = [p for p in columns if any(_curve(r, p[0]) for g in groups for r in g.runs)] or [columns[0]]
    seeds = max(len(g.runs) for g in groups) if per_seed else 0
    width = max(len(shown), min(seeds, 5))
    height = 3.2 * len(envs) + (2.8 * len(groups) * -(-seeds // 5) if per_seed else 0)
    fig = plt.figure(figsize=(4.2 * width, height), constrained_layout=True)
    if per_seed:
        top, bottom = fig.subfigures(2, 1, height_ratios=[3.2 * len(envs), height - 3.2 * len(envs)])
    else:
        top, bottom = fig, None
    axes = top.subplots(len(envs), len(shown), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, env in enumerate(envs):
        for col, (column, label) in enumerate(shown):
            ax = axes[row][col]
            for i, group in enumerate(g for g in groups if g.env == env):
                curves = [c for c in (_curve(r, column) for r in group.runs) if c is not None]
                if not curves:
                    continue
                frames, center, low, high, _ = aggregate_curves(curves, stat, reps=reps)
                color = colors[i % len(colors)]
                ax.plot(frames, center, color=color, label=f"{group.label} (n={len(group.runs)})")
                ax.fill_between(frames, low, high, color=color, alpha=0.2, linewidth=0)
            kinds = {r.kind for g in groups for r in g.runs if g.env == env}
            _style(ax, column, label if kinds == {"eval"} else f"{label} ({'/'.join(sorted(kinds))})", env)
        axes[row][0].legend(fontsize=7, loc="best")
    if bottom is not None:
        _per_seed_panels(bottom, groups, success, colors)
    fig.suptitle(f"{title + ': ' if title else ''}{STAT_NOTES[stat]}", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=out.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def _style(ax: Any, column: str, label: str, title: str) -> None:
    ax.set_xlabel("frames")
    ax.set_ylabel(label)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if column.startswith("success") or column == "dormant_ratio":
        ax.set_ylim(-0.02, 1.02)


def _per_seed_panels(subfig: Any, groups: list[Group], success: str, colors: list[str]) -> None:
    """One panel per run: its success (its reward where it has no success) and its actor dormant ratio (dashed, on
    a right-hand axis in [0, 1] beside a reward)."""
    per_row = 5
    by_seed = [(g, sorted(g.runs, key=lambda r: r.config.seed)) for g in groups]
    rows = [(g, runs[i : i + per_row]) for g, runs in by_seed for i in range(0, len(runs), per_row)]
    axes = subfig.subplots(len(rows), per_row, squeeze=False)
    success_column, success_label = SUCCESS[success]
    for row, (group, runs) in enumerate(rows):
        for col in range(per_row):
            ax = axes[row][col]
            if col >= len(runs):
                ax.axis("off")
                continue
            run, title = runs[col], f"{group.label} seed {runs[col].config.seed}"
            main, dormant = _curve(run, success_column), _curve(run, "dormant_ratio")
            column, label = (success_column, success_label) if main is not None else ("reward", "episode reward")
            main = main if main is not None else _curve(run, column)
            lines = []
            if main is not None:
                lines += ax.plot(*main, color=colors[0], label=label)
            _style(ax, column, label, title)
            if dormant is not None:
                dormant_ax = ax if column != "reward" else ax.twinx()
                lines += dormant_ax.plot(*dormant, "--", color=colors[3], label="dormant ratio")
                if dormant_ax is not ax:
                    dormant_ax.set_ylim(-0.02, 1.02)
                    dormant_ax.set_ylabel("dormant ratio")
            if col == 0 and lines:
                ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="best")
