"""Wall time of a small sweep grid with the local backend vs Ray Tune on this machine, and the overhead Ray adds.

The grid is N tiny TD3 runs on classic-control tasks (seconds each), so the time is mostly per-run overhead, the
worst case for a scheduler. Three ways, measured in one process:

* ``local``: the local queue (``run_local``), one run after another in this process;
* ``ray x1``: Ray Tune with one trial at a time (same serial order as local: the difference is Ray's overhead);
* ``ray x1 fresh``: the same without actor reuse (``reuse_actors=False``): a new worker process per trial;
* ``ray xK``: Ray Tune with as many concurrent trials as CPUs (``--cpus-per-run 1``).

``training`` is the sum over runs of the time spent inside ``model.learn`` (``status.json``'s ``wall_time``);
``overhead/run`` = (wall - training) / N: building envs and models, checkpoints, plots, and for Ray the worker
start, scheduling and result handling. Ray's instance start (``ray.init``) is timed on its own. Torch runs one
thread per run in every mode (Ray trials get ``cpus_per_run`` threads), so the modes compute alike.

    python benchmarks/bench_sweep.py                 # 8 runs of 300 frames
    python benchmarks/bench_sweep.py --runs 16 --frames 600
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import shutil
import tempfile
import time
from pathlib import Path

import pvrw  # noqa: F401  (GL backend before any simulator import)
from pvrw.runs.layout import RunDir, RunStatus
from pvrw.runs.sweep import expand_grid, run_local

TASKS = ("Pendulum-v1", "MountainCarContinuous-v0")


def tiny_config(frames: int) -> dict:
    return {
        "frames": frames,
        "eval_every": frames // 2,
        "eval_episodes": 1,
        "checkpoint_every": frames // 3,
        "video": False,
        "device": "cpu",
        "env_kwargs": {"max_episode_steps": 50},
        "algo_kwargs": {
            "buffer_size": 2 * frames,
            "batch_size": 16,
            "learning_starts": frames * 2 // 3,
            "policy_kwargs": {"net_arch": [16]},
        },
    }


def grid(root: Path, runs: int, frames: int):
    seeds = range(-(-runs // len(TASKS)))
    return expand_grid(root, TASKS, ["none"], [64], seeds, algo="td3", base=copy.deepcopy(tiny_config(frames)))[:runs]


def timed(label: str, fn, root: Path, runs: list) -> dict:
    start = time.perf_counter()
    counts = fn()
    wall = time.perf_counter() - start
    assert counts["finished"] == len(runs), f"{label}: {counts}"
    training = sum(RunStatus.read(RunDir(run.run_dir)).wall_time for run in runs)
    return {"mode": label, "wall": wall, "training": training, "n": len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8, help="runs in the grid")
    parser.add_argument("--frames", type=int, default=300, help="frames per run")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    args = parser.parse_args()

    import ray
    import torch

    from pvrw.runs.ray_backend import available_cpus, run_ray

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    rows = []
    try:
        root = work / "local"
        runs = grid(root, args.runs, args.frames)
        rows.append(timed("local", functools.partial(run_local, runs, root, progress=False), root, runs))

        cpus = args.num_cpus or available_cpus()
        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray_start = time.perf_counter() - start
        for label, concurrent, reuse in (("ray x1", 1, True), ("ray x1 fresh", 1, False), (f"ray x{cpus}", None, True)):
            root = work / label.replace(" ", "_")
            runs = grid(root, args.runs, args.frames)
            sweep = functools.partial(run_ray, runs, root, max_concurrent=concurrent, reuse_actors=reuse, cpus_per_run=1)
            rows.append(timed(label, sweep, root, runs))
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    local = rows[0]
    local_overhead = (local["wall"] - local["training"]) / local["n"]
    print(f"\nsweep of {args.runs} tiny runs ({args.frames} frames each), {available_cpus()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; ray.init: {ray_start:.1f} s\n")  # fmt: skip
    print(f"{'mode':<12} {'wall (s)':>9} {'per run (s)':>12} {'training (s)':>13} {'overhead/run (s)':>17} "
          f"{'vs local':>9} {'Ray adds/run (s)':>17}")  # fmt: skip
    for row in rows:
        overhead = (row["wall"] - row["training"]) / row["n"]
        serial = row["mode"] in ("local", "ray x1", "ray x1 fresh")  # overhead = wall - training only holds one run at a time
        extra = f"{overhead:>17.2f}" if serial else f"{'-':>17}"
        adds = f"{overhead - local_overhead:>17.2f}" if serial else f"{'-':>17}"
        print(f"{row['mode']:<12} {row['wall']:>9.1f} {row['wall'] / row['n']:>12.2f} {row['training']:>13.1f} "
              f"{extra} {local['wall'] / row['wall']:>8.2f}x {adds}")  # fmt: skip


if __name__ == "__main__":
    main()
