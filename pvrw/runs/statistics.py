"""Statistics for RL results with few seeds: mean +- std, the interquartile mean (IQM) with a stratified bootstrap
confidence interval, and Spearman's rank correlation.

IQM and its interval follow Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice", as the
``rliable`` library computes them (``metrics.aggregate_iqm``, ``library.get_interval_estimates`` with the default
``method='percentile'``): the IQM pools all runs x tasks and averages what remains after cutting ``floor(0.25 N)``
scores from each end (``scipy.stats.trim_mean(x, 0.25)``: the middle 3 of 5 runs); the bootstrap re-draws, for each
task independently, as many runs as it has, with replacement, and takes the 2.5 and 97.5 percentiles of the
statistic over ``reps`` re-draws. It is written here with numpy (rliable pins ``arch < 8`` and brings seaborn and
pandas), and draws from a seeded generator, so a table or a figure is reproducible (rliable draws from the global
``np.random``). With one task and 5 runs a 95 % percentile bootstrap covers less than 95 % (about 84 % for normal
scores, reference/statistics.md section 7): report the method, the number of runs and ``reps`` with the numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: ``--stat`` choices
STATS = ("mean-std", "iqm")
REPS = 50_000


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean: sort, drop ``floor(0.25 N)`` values from each end, average the rest (``trim_mean(.25)``).

    :param scores: the scores; with ``axis=None`` all of them are pooled
    :param axis: the axis to reduce (e.g. ``-1`` for one IQM per row)
    """
    scores = np.asarray(scores, dtype=float)
    if axis is None:
        scores, axis = scores.reshape(-1), 0
    ordered = np.sort(scores, axis=axis)
    n = ordered.shape[axis]
    cut = int(0.25 * n)
    return np.take(ordered, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


@dataclass
class Interval:
    """A point estimate with a confidence interval."""

    value: float
    low: float
    high: float


def stratified_bootstrap(
    scores: np.ndarray,
    statistic: Callable[..., np.ndarray] = iqm,
    reps: int = REPS,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """
    Point estimate and percentile-bootstrap interval of ``statistic`` over runs, stratified by task.

    :param scores: ``(runs,)`` for one task or ``(runs, tasks)``
    :param statistic: ``f(samples, axis=-1)`` reducing the pooled runs x tasks of each re-draw (default: IQM)
    :param reps: number of bootstrap re-draws (rliable's default for interval estimates: 50,000)
    :param confidence: size of the interval
    :param seed: seed of the re-draws
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    runs, tasks = scores.shape
    if runs == 0:
        raise ValueError("no scores to bootstrap")
    rng = np.random.default_rng(seed)
    point = float(statistic(scores.reshape(1, -1), axis=-1)[0])
    values = np.empty(reps)
    chunk = max(1, 2_000_000 // (runs * tasks))
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        index = rng.integers(0, runs, size=(n, runs, tasks))  # per task, runs drawn with replacement
        values[start : start + n] = statistic(scores[index, np.arange(tasks)].reshape(n, -1), axis=-1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(point, float(low), float(high))


def interpolate_curves(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """
    Curves sampled at possibly different frames on the union of their frames, each within its own range only.

    :param curves: ``(frames, values)`` per run
    :return: ``(grid, values)`` with ``values`` of shape ``(runs, len(grid))``, NaN where a run does not reach
    """
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    values = np.full((len(curves), len(grid)), np.nan)
    for i, (x, y) in enumerate(curves):
        inside = (grid >= x.min()) & (grid <= x.max())
        values[i, inside] = np.interp(grid[inside], x, y)
    return grid, values


def aggregate_curves(
    curves: list[tuple[np.ndarray, np.ndarray]], stat: str = "mean-std", reps: int = REPS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """
    Aggregate runs' curves at every frame: ``mean-std`` gives the mean and mean -+ std over the runs that reach the
    frame; ``iqm`` the IQM and its 95 % stratified-bootstrap interval (each frame on its own, as rliable's
    sample-efficiency curves).

    :return: ``(frames, center, low, high, count)``, ``count`` being how many runs cover each frame
    """
    if stat not in STATS:
        raise ValueError(f"unknown statistic {stat!r}; choose one of {', '.join(STATS)}")
    grid, values = interpolate_curves(curves)
    count = np.sum(~np.isnan(values), axis=0)
    if stat == "mean-std":
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # columns no run covers: NaN, on purpose
            mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        return grid, mean, mean - std, mean + std, count
    center, low, high = (np.full(len(grid), np.nan) for _ in range(3))
    for j in range(len(grid)):
        column = values[~np.isnan(values[:, j]), j]
        if column.size:
            interval = stratified_bootstrap(column, reps=reps, seed=seed)
            center[j], low[j], high[j] = interval.value, interval.low, interval.high
    return grid, center, low, high, count


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float | None]:
    """
    Spearman's rank correlation (Pearson's on average ranks) and, when scipy is installed, its two-sided p-value.

    :return: ``(rho, p)``; ``rho`` is NaN with fewer than 3 pairs or a constant variable
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), None
    rho = float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])
    try:
        from scipy.stats import spearmanr
    except ImportError:
        return rho, None
    return rho, float(spearmanr(x, y).pvalue)
