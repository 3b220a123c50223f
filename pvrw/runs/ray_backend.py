"""The Ray backend of ``pvrw sweep`` (and the Ray set-up ``pvrw extract`` shares): the same runs, on a Ray cluster.

**Sweeps.** Every unfinished run of the grid becomes one Ray Tune trial whose function calls
:func:`~pvrw.runs.training.run_training` on the run's directory under the user's sweep root, exactly as the local
queue does: same directory layout, same ``metrics.csv``, same checkpoints. Ray only places trials on workers and
restarts them: a trial whose worker dies (``FailureConfig(max_failures=...)``) is started again and
``run_training`` resumes it from its last pvrw checkpoint (model and replay buffer). Tune's own checkpointing is not
used, so the pvrw run directory stays the single source of truth and re-running the sweep command skips finished
runs and resumes the others, whichever backend ran them before.

On a multi-node cluster the sweep root must be on a filesystem every node sees (NFS or similar), because a trial
restarted on another node must find its checkpoints; a trial that cannot see the root fails with that advice.

**Extraction** over Ray workers (``pvrw extract --backend ray``) lives in :mod:`pvrw.runs.ray_extract`.

Ray is optional (``pip install "pvrw[ray]"``); it is imported only when this backend is used.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvrw.runs.layout import FAILED, FINISHED, RUNNING, RunDir, RunStatus
from pvrw.runs.sweep import SweepRun, write_index

RAY_INSTALL_HINT = 'the Ray backend needs Ray, which is not installed: pip install "pvrw[ray]"'

#: environment variables passed on to the workers of a cluster (weight locations, offline mode; never tokens)
FORWARDED_ENV_PREFIXES = ("PVRW_", "HF_", "HUGGINGFACE_", "TORCH_HOME", "TRANSFORMERS_")

#: Ray Tune's own files (experiment state, per-trial results) go here, under the sweep root
TUNE_STORAGE_DIR = ".ray_tune"

#: what a trial reports when another process holds its run directory's lock
BUSY = "busy"


class RayNotInstalledError(ImportError):
    """Ray (with Tune) cannot be imported; the message says how to install it."""


class RayResourceError(ValueError):
    """A request the Ray cluster can never satisfy (more CPUs/GPUs per run than any node has)."""


def import_ray() -> Any:
    """Import ``ray`` and ``ray.tune``, or raise :class:`RayNotInstalledError` naming the install command."""
    try:
        import ray
        import ray.tune
    except ImportError as err:
        raise RayNotInstalledError(f"{RAY_INSTALL_HINT} ({err})") from None
    return ray


def available_cpus() -> int:
    """CPUs this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Connect to Ray: the instance already initialised in this process, a cluster, or a new local instance.

    :param address: ``None`` starts a local instance limited to this machine; ``auto`` joins the cluster this
        machine belongs to (``ray start --head`` ran here); ``ray://HOST:PORT`` connects a client to a remote head.
    :param num_cpus: CPUs of a new local instance (default: all this process may use; more is refused).
    :param num_gpus: GPUs of a new local instance (default: Ray's detection).
    :return: ``True`` if this call started or connected Ray (the caller then shuts it down), ``False`` if an
        existing connection was reused.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": True}
    if address:
        # a cluster's workers were started by `ray start`, not from this shell: pass on where weights are found
        env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) and "TOKEN" not in k}
        ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None, **kwargs)
        return True
    cpus = available_cpus()
    if num_cpus is not None and num_cpus > cpus:
        raise RayResourceError(f"num_cpus={num_cpus}: this machine has {cpus} CPUs; give at most {cpus}")
    ray.init(num_cpus=num_cpus or cpus, num_gpus=num_gpus, **kwargs)
    return True


def check_resources(ray: Any, cpus: float, gpus: float, what: str, fix: str = "--cpus-per-run/--gpus-per-run") -> None:
    """Refuse a request no node of the cluster can ever satisfy (Tune would otherwise wait forever).

    :param what: who asks (for the message), e.g. "each run".
    :param fix: the options that set the request, which the message tells the user to lower.
    """
    if cpus < 0 or gpus < 0 or cpus + gpus <= 0:
        raise RayResourceError(f"{what}: cpus={cpus}, gpus={gpus}; give a positive number of CPUs or GPUs")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes) or "no live nodes"
        raise RayResourceError(
            f"{what} asks for {cpus:g} CPU and {gpus:g} GPU, but no Ray node has that much ({have}); "
            f"lower {fix} or add bigger nodes"
        )


# ---------------------------------------------------------------------------------------------------- sweeps


def _train_trial(tune_config: dict[str, Any], specs: dict[str, dict[str, Any]]) -> None:
    """The Tune function trainable: one pvrw run, trained (or resumed) to its budget by ``run_training``."""
    from ray import tune

    import pvrw  # noqa: F401  (headless GL before any simulator import)
    from pvrw.runs.config import ConfigError, RunConfig
    from pvrw.runs.layout import RunDirError
    from pvrw.runs.lock import RunLockedError, lock_command
    from pvrw.runs.training import run_training

    spec = specs[tune_config["run"]]
    root, run_dir = Path(spec["root"]), Path(spec["run_dir"])
    if not (root / "sweep.json").is_file():
        raise FileNotFoundError(
            f"the sweep root {root} is not visible on this Ray node ({os.uname().nodename}); "
            "put --root on a filesystem shared by every node of the cluster (NFS or similar)"
        )
    # Tune starts trials in their own directory: run from the driver's directory (same machine or shared
    # filesystem) so that relative paths in the config (weights, caches) mean what they meant to the user.
    if os.path.isdir(spec["cwd"]):
        os.chdir(spec["cwd"])
    for path in spec["sys_path"]:
        if path not in sys.path and os.path.isdir(path):
            sys.path.append(path)
    if spec["torch_threads"]:
        import torch

        torch.set_num_threads(spec["torch_threads"])
    try:
        with lock_command("pvrw sweep (Ray trial)"):
            status = run_training(RunConfig(**spec["config"]), run_dir, progress=False)
    except RunLockedError as err:  # another process trains it: leave it (and its status.json) alone
        tune.report({"state": BUSY, "frames": 0, "error": str(err)})
        return
    except (ConfigError, RunDirError) as err:  # deterministic: retrying cannot help
        tune.report({"state": FAILED, "frames": RunStatus.read(run_dir).frames, "error": str(err)})
        return
    tune.report({"state": status.state, "frames": status.frames, "attempts": status.attempts,
                 "wall_time": status.wall_time})  # fmt: skip


def _trial_key(run: SweepRun, root: Path) -> str:
    return os.path.relpath(run.run_dir, root)


def run_ray(
    runs: list[SweepRun],
    root: str | os.PathLike,
    *,
    address: str | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
    max_failures: int = 3,
    max_concurrent: int | None = None,
    num_cpus: int | None = None,
    reuse_actors: bool = True,
    on_run: Callable[[SweepRun, str], None] | None = None,
    verbose: int = 0,
) -> dict[str, int]:
    """Run the unfinished runs of the grid as Ray Tune trials; skip finished ones (like :func:`run_local`).

    :param runs: the grid (:func:`~pvrw.runs.sweep.expand_grid`).
    :param root: the sweep root; run directories, ``sweep.json`` and Tune's files (``.ray_tune/``) go there.
    :param address: ``None`` (local Ray instance on this machine), ``auto`` or ``ray://HOST:PORT`` (a cluster).
    :param cpus_per_run: CPUs reserved per trial (also its torch thread count when a whole number).
    :param gpus_per_run: GPUs reserved per trial (fractions share a GPU); the run's device ``auto`` then is CUDA.
    :param max_failures: restarts of a trial after its worker dies or it raises (each resumes from checkpoint).
    :param max_concurrent: at most this many trials at once (default: as many as the resources allow).
    :param num_cpus: CPUs of a new local instance (default: all of this machine's).
    :param reuse_actors: start the next trial in the worker process of a finished one (saves the process start
        and the torch/SB3 imports, seconds per run; see benchmarks/bench_sweep.py).
    :param on_run: called as ``on_run(run, event)``, event ``skip``, ``start``, ``retry``, ``busy`` (another
        process holds the run's lock: left to it), ``done`` or ``fail``.
    :param verbose: Tune's own console output (0 silent, 1 status table, 2 also trial results).
    :return: how many runs were ``skipped`` (already finished), ``finished`` now, ``failed``, and ``busy``.
    """
    ray = import_ray()
    from ray import tune

    root = Path(root).resolve()
    runs = [SweepRun(Path(run.run_dir).resolve(), run.config) for run in runs]
    by_key = {_trial_key(run, root): run for run in runs}
    if len(by_key) != len(runs):
        raise ValueError("two runs of the grid share a run directory; every grid cell needs its own")
    notify = on_run or (lambda run, event: None)
    counts = {"skipped": 0, "finished": 0, "failed": 0, "busy": 0}
    root.mkdir(parents=True, exist_ok=True)
    write_index(root, runs)
    pending = []
    for run in runs:
        status = RunStatus.read(RunDir(run.run_dir))
        if status.finished and status.frames >= run.config.frames:
            counts["skipped"] += 1
            notify(run, "skip")
        else:
            pending.append(run)
    if not pending:
        return counts

    started = init_ray(address, num_cpus=num_cpus)
    try:
        check_resources(ray, cpus_per_run, gpus_per_run, "each run")
        threads = int(cpus_per_run) if float(cpus_per_run).is_integer() and cpus_per_run >= 1 else 0
        specs = {
            _trial_key(run, root): {
                "root": str(root),
                "run_dir": str(run.run_dir),
                "config": run.config.to_dict(),
                "cwd": os.getcwd(),
                "sys_path": [os.path.abspath(p) for p in sys.path if p],
                "torch_threads": threads,
            }
            for run in pending
        }
        trainable = tune.with_resources(
            tune.with_parameters(_train_trial, specs=specs), {"cpu": cpus_per_run, "gpu": gpus_per_run}
        )
        if not verbose:  # Tune's newer console output prints a header even at verbose=0
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search(list(specs))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent,
                reuse_actors=reuse_actors,
                trial_name_creator=lambda trial: trial.config["run"],
                trial_dirname_creator=lambda trial: trial.config["run"].replace(os.sep, "__") + "_" + trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name=time.strftime("sweep_%Y%m%d-%H%M%S"),
                storage_path=str(root / TUNE_STORAGE_DIR),
                failure_config=tune.FailureConfig(max_failures=max_failures),
                callbacks=[_EventCallback(by_key, notify)],
                verbose=verbose,
            ),
        )
        results = tuner.fit()
        errors, busy = {}, set()
        for result in results:
            key = (result.config or {}).get("run")
            if key is not None and result.error is not None:
                errors[key] = result.error
            if key is not None and (result.metrics or {}).get("state") == BUSY:
                busy.add(key)
        for run in pending:
            if _trial_key(run, root) in busy:
                counts["busy"] += 1
                continue
            rd = RunDir(run.run_dir)
            status = RunStatus.read(rd)
            if status.finished and status.frames >= run.config.frames:
                counts["finished"] += 1
                continue
            counts["failed"] += 1
            error = errors.get(_trial_key(run, root))
            if status.state in (RUNNING, FINISHED) or (error is not None and not status.error):
                # the worker died without writing it (SIGKILL, node lost): say so, so sweep.json is true
                status.state = FAILED
                status.error = (
                    _one_line(error) if error is not None else "the Ray trial stopped before the run finished"
                )
                status.write(rd)
    finally:
        write_index(root, runs)
        if started:
            ray.shutdown()
    return counts


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:500]


def _make_event_callback_class() -> type:
    from ray.tune import Callback

    class EventCallback(Callback):
        """Forwards Tune's trial events to the sweep's ``on_run`` hook (start, retry, done, fail)."""

        def __init__(self, runs: dict[str, SweepRun], notify: Callable[[SweepRun, str], None]):
            self.runs, self.notify = runs, notify

        def _event(self, trial: Any, event: str) -> None:
            run = self.runs.get(trial.config.get("run"))
            if run is not None:
                self.notify(run, event)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._event(trial, "start")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._event(trial, "retry")

        def on_trial_complete(self, iteration, trials, trial, **info):
            state = (trial.last_result or {}).get("state")
            self._event(trial, {FAILED: "fail", BUSY: "busy"}.get(state, "done"))

        def on_trial_error(self, iteration, trials, trial, **info):
            self._event(trial, "fail")

    return EventCallback


def _EventCallback(runs: dict[str, SweepRun], notify: Callable[[SweepRun, str], None]) -> Any:
    return _make_event_callback_class()(runs, notify)
