"""The study's grid as a list of independent runs, and the local backend that runs them as a queue.

A sweep is nothing but run directories under a root: ``ROOT/<task>/<algo>_<pvr>_<resolution>/seed_<n>``. Each one
is an ordinary run (``pvrw plot``/``pvrw eval`` work on it) whose ``status.json`` says whether it is finished, so any
backend can skip finished runs and call :func:`~pvrw.runs.training.run_training` on the others, which resumes
them. ``ROOT/sweep.json`` lists every run with its status.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

from pvrw.runs.config import METAWORLD_PREFIX, ConfigError, RunConfig, build_config
from pvrw.runs.layout import RunDir, RunStatus, atomic_write_json

#: the study's observation variants, what ``--pvr all`` expands to
STUDY_PVRS: tuple[str, ...] = ("none", "resnet18", "dinov2", "dinov2_reg", "vc1")


@dataclass
class SweepRun:
    """One cell of the grid: where it runs and what it trains."""

    run_dir: Path
    config: RunConfig

    @property
    def name(self) -> str:
        return str(self.run_dir)


def task_env_id(task: str) -> str:
    """``push-v3`` -> ``metaworld/push-v3``; ids with a namespace or other Gymnasium ids pass unchanged."""
    if "/" in task or not task.endswith("-v3"):
        return task
    return METAWORLD_PREFIX + task


#: ``pvr_kwargs`` keys that name a different variant of a PVR run (readout, fine-tuning), in directory names
VARIANT_PVR_KEYS = ("tokens", "layers", "finetune", "bn", "backbone_lr")


def _dir_part(value: Any) -> str:
    text = ".".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return re.sub(r"[^A-Za-z0-9+.=-]", "", text.replace(",", ".").replace(":", ""))


def run_dir_name(config: RunConfig, axes: Iterable[str] = ()) -> Path:
    """The grid cell's directory, relative to the sweep root: ``<task>/<algo>_<pvr>_<res>[_key-value...]/seed_<n>``.

    The suffix names the readout / fine-tuning ``pvr_kwargs`` a run sets (``_tokens-mean_finetune-last2``) and the
    value of each extra grid axis (a dotted config key, named by its last part).
    """
    task = config.env.removeprefix(METAWORLD_PREFIX).replace("/", "_")
    parts = [f"{k}-{_dir_part(config.pvr_kwargs[k])}" for k in VARIANT_PVR_KEYS if k in config.pvr_kwargs]
    data = config.to_dict()
    for axis in axes:
        head, _, tail = axis.partition(".")
        if head == "pvr_kwargs" and tail in VARIANT_PVR_KEYS:
            continue
        mapping = data if head in data else data["algo_kwargs"]  # bare algorithm arguments live in algo_kwargs
        value = mapping.get(head)
        if tail:
            value = (value or {}).get(tail)
        parts.append(f"{axis.rpartition('.')[2]}-{_dir_part(value)}")
    suffix = "".join(f"_{p}" for p in parts)
    return Path(task) / f"{config.algo_name}_{config.pvr}_{config.resolution}{suffix}" / f"seed_{config.seed}"


def expand_grid(
    root: str | os.PathLike,
    tasks: Iterable[str],
    pvrs: Iterable[str],
    resolutions: Iterable[int],
    seeds: Iterable[int],
    algo: str | None = None,
    base: dict[str, Any] | None = None,
    preset: str | None = None,
    axes: dict[str, list[Any]] | None = None,
) -> list[SweepRun]:
    """Every (task, pvr, resolution, seed, *axes) run of the grid, each with its resolved config.

    :param algo: the algorithm of every run; ``None``: ``base``'s, else DrM.
    :param base: overrides applied to every run (frames, hyper-parameters, ...), as in a ``--config`` file.
    :param axes: more grid axes: config key (``pvr_kwargs.tokens``, ``batch_size``...) -> its values. Backbone
        options apply to PVR runs only: the pixel runs (``pvr: none``) of the grid are not multiplied by them.
    """
    tasks, pvrs, axes = list(tasks), list(pvrs), dict(axes or {})
    check_grid_names(tasks, pvrs)
    runs, seen = [], set()
    for task, pvr, resolution, seed, *values in itertools.product(tasks, pvrs, resolutions, seeds, *axes.values()):
        cell = {"env": task_env_id(task), "pvr": pvr, "resolution": int(resolution), "seed": int(seed)}
        if algo is not None:
            cell["algo"] = algo
        extra = {k: v for k, v in zip(axes, values) if not (pvr == "none" and k.startswith("pvr_kwargs."))}
        config = build_config(base or {}, cell, extra, preset=preset)
        run_dir = Path(root) / run_dir_name(config, [k for k in axes if k in extra])
        if run_dir not in seen:
            seen.add(run_dir)
            runs.append(SweepRun(run_dir, config))
    return runs


def check_grid_names(tasks: list[str], pvrs: list[str]) -> None:
    """Refuse an unknown Meta-World task or backbone before any run starts (not hours into the queue)."""
    from pvrw.envs.metaworld import parse_metaworld_id
    from pvrw.runs.envs import check_backbone_name

    for task in tasks:
        env_id = task_env_id(task)
        try:
            if env_id.startswith(METAWORLD_PREFIX):
                parse_metaworld_id(env_id)
            elif ":" not in env_id and env_id not in gym.registry:  # "module:Id" registers itself when made
                raise ValueError(_unknown_task_message(env_id))
        except ValueError as err:
            raise ConfigError(f"--tasks {task}: {err}") from None
    for pvr in pvrs:
        check_backbone_name(pvr)


def _unknown_task_message(env_id: str) -> str:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    base = re.sub(r"-v\d+$", "", env_id)
    if f"{base}-v3" in ALL_V3_ENVIRONMENTS:
        return f"Meta-World has only -v3 tasks; use {base}-v3"
    names = [*ALL_V3_ENVIRONMENTS, *gym.registry]
    close = difflib.get_close_matches(env_id, names, n=3, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else ""
    return f"neither a Meta-World task (e.g. push-v3) nor a registered Gymnasium id{hint}"


def write_index(root: str | os.PathLike, runs: list[SweepRun]) -> Path:
    """Write ``ROOT/sweep.json``: every run's directory (relative to the root), variant and status."""
    root = Path(root)
    entries = []
    for run in runs:
        status = RunStatus.read(RunDir(run.run_dir))
        entries.append(
            {
                "run_dir": os.path.relpath(run.run_dir, root),
                "env": run.config.env,
                "variant": run.config.variant,
                "seed": run.config.seed,
                "state": status.state,
                "frames": status.frames,
                "total_frames": run.config.frames,
                "error": status.error,
            }
        )
    path = root / "sweep.json"
    atomic_write_json(path, {"runs": entries})
    return path


def run_local(
    runs: list[SweepRun],
    root: str | os.PathLike,
    progress: bool = True,
    stop_on_error: bool = False,
    on_run: Callable[[SweepRun, str], None] | None = None,
) -> dict[str, int]:
    """Run the grid one run after another in this process, skipping finished runs and resuming the others.

    A run whose directory another process uses (its lock, :mod:`pvrw.runs.lock`) is left to it: event ``busy``.

    :param on_run: called as ``on_run(run, event)`` with event ``skip``, ``start``, ``busy``, ``done`` or ``fail``.
    :return: how many runs were ``skipped`` (already finished), ``finished`` now, ``failed``, and ``busy``.
    """
    from pvrw.runs.lock import RunLockedError
    from pvrw.runs.training import run_training

    def notify(run: SweepRun, event: str) -> None:
        if on_run is not None:
            on_run(run, event)

    counts = {"skipped": 0, "finished": 0, "failed": 0, "busy": 0}
    write_index(root, runs)
    for run in runs:
        status = RunStatus.read(RunDir(run.run_dir))
        if status.finished and status.frames >= run.config.frames:
            counts["skipped"] += 1
            notify(run, "skip")
            continue
        notify(run, "start")
        try:
            run_training(run.config, run.run_dir, progress=progress)
        except KeyboardInterrupt:
            write_index(root, runs)
            raise
        except RunLockedError as err:
            counts["busy"] += 1
            notify(run, "busy")
            print(err, file=sys.stderr)
        except Exception as err:
            counts["failed"] += 1
            notify(run, "fail")
            print(f"run {run.run_dir} failed: {err}", file=sys.stderr)
            if stop_on_error:
                write_index(root, runs)
                raise
        else:
            counts["finished"] += 1
            notify(run, "done")
        write_index(root, runs)
    return counts
