"""Replay memory benchmark: bytes per transition and sample()/add() speed of DrMReplayBuffer beside SB3's buffer.

Measured, not asserted. Run: ``python benchmarks/bench_replay_memory.py`` (about a minute on 2 CPU cores).

1. Bytes per transition (``pvrw.drm.replay_memory.study_memory_table``): DrMReplayBuffer vs SB3's ``ReplayBuffer`` /
   ``NStepReplayBuffer`` vs the DrQ-v2/DrM reference's per-step stacked storage, for pixels at 84/112/224 and each
   PVR's features (float32 and float16 storage), scaled to ``--buffer-size`` transitions.
2. Speed, 112x112 pixels, frame stack 3, n_steps 3: both buffers get the same episodes (``--episode-length`` steps,
   random frames); ``sample(256)`` and ``add()`` are timed in interleaved rounds (random order), median reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer

import pvrw  # noqa: F401  (GL backend set before anything imports mujoco)
from pvrw.drm.buffers import DrMReplayBuffer
from pvrw.drm.replay_memory import format_memory_table, study_memory_table


def episode_steps(rng: np.random.Generator, resolution: int, k: int, length: int):
    """Yield add() arguments of one zero-padded Meta-World-like episode that ends at its time limit."""
    frames = [np.zeros((3, resolution, resolution), np.uint8)] * (k - 1) + [
        rng.integers(0, 256, (3, resolution, resolution), dtype=np.uint8)
    ]
    for t in range(length):
        next_frames = [*frames[1:], rng.integers(0, 256, (3, resolution, resolution), dtype=np.uint8)]
        end = t == length - 1
        yield (
            np.concatenate(frames)[None],
            np.concatenate(next_frames)[None],
            rng.uniform(-1, 1, (1, 4)).astype(np.float32),
            rng.normal(size=1).astype(np.float32),
            np.array([end]),
            [{"TimeLimit.truncated": end}],
        )
        frames = next_frames


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def speed_table(capacity: int, episode_length: int, batch_size: int, rounds: int, resolution: int = 112) -> str:
    k = 3
    space = spaces.Box(0, 255, (3 * k, resolution, resolution), np.uint8)
    action_space = spaces.Box(-1, 1, (4,), np.float32)
    buffers = {
        "SB3 NStepReplayBuffer": NStepReplayBuffer(capacity, space, action_space, "cpu", n_steps=3, gamma=0.99),
        "DrMReplayBuffer reference": DrMReplayBuffer(capacity, space, action_space, "cpu", n_steps=3, gamma=0.99),
        "DrMReplayBuffer truncated": DrMReplayBuffer(
            capacity, space, action_space, "cpu", n_steps=3, gamma=0.99, n_step_rule="truncated"
        ),
    }
    rng = np.random.default_rng(0)
    steps = []
    while len(steps) < capacity + episode_length:  # wrap once
        steps.extend(episode_steps(rng, resolution, k, episode_length))
    add_times: dict[str, list[float]] = {name: [] for name in buffers}
    for step in steps:  # interleaved: each step goes to every buffer in turn
        for name, buffer in buffers.items():
            start = time.perf_counter()
            buffer.add(*step)
            add_times[name].append(time.perf_counter() - start)

    sample_times: dict[str, list[float]] = {name: [] for name in buffers}
    for buffer in buffers.values():
        buffer.sample(batch_size)  # warm-up
    names = list(buffers)
    for _ in range(rounds):  # interleaved, in a fresh random order each round
        for name in rng.permutation(names):
            sample_times[name] += timed(lambda b=buffers[name]: b.sample(batch_size), 1)

    base = statistics.median(sample_times["SB3 NStepReplayBuffer"])
    lines = [
        f"{resolution}x{resolution} pixels, frame stack {k}, n_steps 3, capacity {capacity:,} "
        f"({episode_length}-step episodes), sample batch {batch_size}, median of {rounds} rounds",
        f"{'buffer':<28}{'sample ms':>11}{'batches/s':>11}{'vs SB3':>8}{'add() us':>10}{'buffer MB':>11}",
    ]
    for name, buffer in buffers.items():
        sample_s = statistics.median(sample_times[name])
        nbytes = (
            buffer.nbytes()
            if isinstance(buffer, DrMReplayBuffer)
            else sum(
                getattr(buffer, a).nbytes
                for a in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
            )
        )
        lines.append(
            f"{name:<28}{sample_s * 1e3:>11.2f}{1 / sample_s:>11.1f}{base / sample_s:>8.2f}"
            f"{statistics.median(add_times[name]) * 1e6:>10.1f}{nbytes / 1e6:>11.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buffer-size", type=int, default=1_000_000, help="transitions the memory totals are scaled to")
    parser.add_argument("--episode-length", type=int, default=250, help="episode length (Meta-World: 250)")
    parser.add_argument("--capacity", type=int, default=2_000, help="transitions held by the buffers timed for speed")
    parser.add_argument("--batch-size", type=int, default=256, help="sample() batch size")
    parser.add_argument("--rounds", type=int, default=30, help="timed sample() calls per buffer")
    args = parser.parse_args()

    print("Replay memory per transition (measured nbytes of allocated buffers)")
    print(format_memory_table(study_memory_table(args.buffer_size, episode_length=args.episode_length)))
    print()
    print(speed_table(args.capacity, args.episode_length, args.batch_size, args.rounds))


if __name__ == "__main__":
    main()
