"""Agent steps per second of ``make_env`` Meta-World pixel envs: full vs fast rendering, 112 and 224 px, single env and
vector envs (sync and async), measured side by side in one run.

For every (mode, resolution) the full- and fast-quality envs are built together and timed in alternating blocks, so
that a change in machine load hits both alike; the speed-up column is the ratio of the two means. One agent step is
``action_repeat`` simulator steps plus one render; a vector step of n envs counts n agent steps.

    python benchmarks/bench_envs.py                # default: push-v3, 30 agent steps per block, 2 blocks
    python benchmarks/bench_envs.py --steps 100 --blocks 3 --modes single async
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import pvrw  # noqa: F401  (chooses the GL backend before mujoco is imported)
from pvrw.envs import make_env, make_vec_env

MODES = ("single", "sync", "async")


def _build(mode: str, env_id: str, resolution: int, quality: str, n_envs: int, seed: int):
    kwargs = dict(resolution=resolution, render_quality=quality)
    if mode == "single":
        return make_env(env_id, seed=seed, **kwargs)
    return make_vec_env(env_id, n_envs, seed=seed, vectorization_mode=mode, **kwargs)


def _time_block(env, steps: int, rng: np.random.Generator) -> float:
    """Agent steps per second over ``steps`` (vector) steps with uniform random actions."""
    space = env.action_space
    n = getattr(env, "num_envs", 1)
    actions = rng.uniform(space.low, space.high, (steps, *space.shape)).astype(np.float32)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if n == 1 and (terminated or truncated):
            env.reset()
    return steps * n / (time.perf_counter() - start)


def run(env_id: str, resolutions: list[int], modes: list[str], n_envs: int, steps: int, blocks: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for mode in modes:
        for resolution in resolutions:
            start = time.perf_counter()
            envs = {q: _build(mode, env_id, resolution, q, n_envs, seed=0) for q in ("full", "fast")}
            for env in envs.values():
                env.reset()
                _time_block(env, 2, rng)  # warm-up: GL context creation, first frames
            build_s = time.perf_counter() - start
            rates: dict[str, list[float]] = {"full": [], "fast": []}
            for _ in range(blocks):
                for quality, env in envs.items():
                    rates[quality].append(_time_block(env, steps, rng))
            for env in envs.values():
                env.close()
            full, fast = float(np.mean(rates["full"])), float(np.mean(rates["fast"]))
            rows.append(dict(mode=mode, n=1 if mode == "single" else n_envs, res=resolution, full=full, fast=fast,
                             spread_full=float(np.ptp(rates["full"])), spread_fast=float(np.ptp(rates["fast"])),
                             build_s=build_s))
            r = rows[-1]
            print(f"  measured {mode:6s} n={r['n']} {resolution}px: full {full:6.1f}/s, fast {fast:6.1f}/s", flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"| {'mode':6s} | {'n':>2s} | {'res':>4s} | {'full steps/s':>13s} | {'fast steps/s':>13s} "
              f"| {'fast/full':>9s} | {'build+warm s':>12s} |")
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for r in rows:
        lines.append(
            f"| {r['mode']:6s} | {r['n']:2d} | {r['res']:4d} | {r['full']:7.1f} ±{r['spread_full'] / 2:4.1f} "
            f"| {r['fast']:7.1f} ±{r['spread_fast'] / 2:4.1f} | {r['fast'] / r['full']:8.1f}x | {r['build_s']:12.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="metaworld/push-v3")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--n-envs", type=int, default=2, help="sub-envs of the vector envs")
    parser.add_argument("--steps", type=int, default=30, help="(vector) steps per timed block")
    parser.add_argument("--blocks", type=int, default=2, help="alternating full/fast blocks per configuration")
    args = parser.parse_args()
    print(f"{args.env}, action_repeat=2, frame_stack=3, random actions; MUJOCO_GL={os.environ.get('MUJOCO_GL')}, "
          f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}")
    rows = run(args.env, args.resolutions, args.modes, args.n_envs, args.steps, args.blocks)
    print(f"load average after: {os.getloadavg()[0]:.2f}  (± is half the spread between blocks)")
    print(format_table(rows))


if __name__ == "__main__":
    main()
