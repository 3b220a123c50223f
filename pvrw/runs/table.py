"""``pvrw table``: one row per configuration (runs that differ only by seed), the study's comparison in one table.

Per run, from ``metrics.csv`` (evaluation rows; training episodes when a run has none) and its newest checkpoint:
final success and reward (the last row), the first frame at which success reaches a threshold, peak and final actor
dormant ratio (rows after ``learning_starts`` only: before the first update DrM reports its initial 1.0), trainable
parameters (the saved policy's parameters without target networks), replay memory (the run's buffer at its full
capacity, measured as ``pvrw params`` does) and gradient updates per second of training wall time (environment
steps and evaluations included). Per configuration: mean +- std and the IQM with its 95 % stratified-bootstrap
interval over seeds (:mod:`pvrw.runs.statistics`); the correlations between final dormant ratio and final success
(the study's) and final reward are computed over all runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pvrw.runs.checkpoint import MODEL_FILE, latest_checkpoint
from pvrw.runs.layout import RunDir
from pvrw.runs.plotting import SUCCESS, Group, RunCurves, learning_starts
from pvrw.runs.statistics import REPS, spearman, stratified_bootstrap


@dataclass
class RunSummary:
    """One run's numbers (``None``: not available)."""

    run: RunCurves
    success: float | None
    reward: float | None
    frames_to_threshold: float | None  # math.inf: never reached
    peak_dormant: float | None
    final_dormant: float | None
    parameters: int | None
    replay_bytes: float | None
    updates_per_second: float | None


def _checkpoint_facts(root: Path) -> tuple[int | None, float | None, float | None]:
    """Trainable parameters, replay bytes at full capacity and updates per second, from the newest checkpoint."""
    import torch
    from stable_baselines3.common.save_util import json_to_data

    rd = RunDir(root)
    info = latest_checkpoint(rd)
    if info is None:
        return None, None, None
    with zipfile.ZipFile(rd.checkpoints / info.dir / MODEL_FILE) as archive:
        data = json_to_data(archive.read("data").decode())
        state = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu", weights_only=True)
    parameters = sum(
        int(v.numel())
        for k, v in state.items()
        if "_target." not in k and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    updates = data.get("_n_updates")
    speed = updates / info.wall_time if isinstance(updates, int) and info.wall_time > 0 else None
    return parameters, _replay_bytes(data), speed


def _replay_bytes(data: dict[str, Any]) -> float | None:
    from pvrw.drm.buffers import DrMReplayBuffer
    from pvrw.drm.replay_memory import replay_memory_report

    space, actions, size = data.get("observation_space"), data.get("action_space"), data.get("buffer_size")
    if space is None or actions is None or not isinstance(size, int) or len(getattr(space, "shape", ()) or ()) == 0:
        return None
    kwargs = data.get("replay_buffer_kwargs") or {}
    try:
        report = replay_memory_report(
            space, actions, int(kwargs.get("n_steps", 1)), size, storage_dtype=kwargs.get("storage_dtype")
        )
    except (ValueError, TypeError):
        return None
    drm_layout = data.get("replay_buffer_class") is DrMReplayBuffer
    return report.drm_total_bytes if drm_layout else report.sb3_total_bytes


def summarise_run(run: RunCurves, success: str = "any-step", threshold: float = 0.8) -> RunSummary:
    """The numbers of one run (see the module docstring)."""
    column = SUCCESS[success][0]
    rows = run.rows
    last = rows[-1] if rows else {}
    reached = [r["frames"] for r in rows if r.get(column) is not None and r[column] >= threshold]
    has_success = any(r.get(column) is not None for r in rows)
    starts = learning_starts(run.config)
    dormant = [r["dormant_ratio"] for r in rows if r.get("dormant_ratio") is not None and r["steps"] > starts]
    parameters, replay, speed = _checkpoint_facts(run.root)
    return RunSummary(
        run=run,
        success=last.get(column),
        reward=last.get("reward"),
        frames_to_threshold=(reached[0] if reached else math.inf) if has_success else None,
        peak_dormant=max(dormant) if dormant else None,
        final_dormant=dormant[-1] if dormant else None,
        parameters=parameters,
        replay_bytes=replay,
        updates_per_second=speed,
    )


def _values(summaries: list[RunSummary], name: str) -> np.ndarray:
    return np.array([getattr(s, name) for s in summaries if getattr(s, name) is not None], dtype=float)


def _mean_std(values: np.ndarray, digits: int) -> str:
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}" if values.size else "–"


def _iqm(values: np.ndarray, digits: int, reps: int) -> str:
    if not values.size:
        return "–"
    interval = stratified_bootstrap(values, reps=reps)
    return f"{interval.value:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def _frames(values: np.ndarray) -> str:
    if not values.size:
        return "–"
    median, reached = float(np.median(values)), int(np.isfinite(values).sum())
    return f"{'never' if math.isinf(median) else f'{median:,.0f}'} ({reached}/{values.size})"


def _same(values: np.ndarray, fmt: str) -> str:
    if not values.size:
        return "–"
    low, high = values.min(), values.max()
    return format(low, fmt) if low == high else f"{format(low, fmt)}–{format(high, fmt)}"


def table_rows(
    groups: list[Group], success: str = "any-step", threshold: float = 0.8, reps: int = REPS
) -> tuple[list[dict[str, str]], list[RunSummary]]:
    """One formatted row per configuration, and every run's summary."""
    rows, summaries = [], []
    for group in groups:
        runs = [summarise_run(r, success, threshold) for r in group.runs]
        summaries.extend(runs)
        success_values, reward_values = _values(runs, "success"), _values(runs, "reward")
        rows.append(
            {
                "env": group.env,
                "config": group.label,
                "seeds": ",".join(str(s.run.config.seed) for s in runs),
                "success (mean ± std)": _mean_std(success_values, 2),
                "success IQM [95% CI]": _iqm(success_values, 2, reps),
                "reward (mean ± std)": _mean_std(reward_values, 1),
                "reward IQM [95% CI]": _iqm(reward_values, 1, reps),
                f"frames to success ≥ {threshold:g} (median, reached)": _frames(_values(runs, "frames_to_threshold")),
                "peak dormant": _mean_std(_values(runs, "peak_dormant"), 3),
                "final dormant": _mean_std(_values(runs, "final_dormant"), 3),
                "trainable params": _same(_values(runs, "parameters"), ",.0f"),
                "replay GB": _same(_values(runs, "replay_bytes") / 1e9, ".3g"),
                "updates/s": _mean_std(_values(runs, "updates_per_second"), 1),
            }
        )
    return rows, summaries


def dormant_correlation(summaries: list[RunSummary], other: str = "success") -> tuple[float, float | None, int]:
    """Spearman's rho between final dormant ratio and final ``other`` (``success`` or ``reward``) over the runs that
    have both: ``(rho, p, n)``."""
    pairs = [(s.final_dormant, getattr(s, other)) for s in summaries]
    pairs = [pair for pair in pairs if None not in pair]
    if not pairs:
        return float("nan"), None, 0
    rho, p = spearman(*np.array(pairs, dtype=float).T)
    return rho, p, len(pairs)


def format_table(rows: list[dict[str, str]], fmt: str = "markdown") -> str:
    """The rows as a Markdown table or CSV text."""
    if not rows:
        return ""
    header = list(rows[0])
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row[k].replace("|", "/") for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"
