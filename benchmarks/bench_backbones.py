"""Backbone throughput and PVRObservation overhead, measured side by side in one run.

For each backbone and resolution (RANDOM weights: speed does not depend on the values):

* images/s of a bare forward pass (uint8 -> resize/normalise -> features) at batch 1 and batched;
* the wrapper's overhead: ``PVRObservation`` stepping a frame-stack-3 env that replays pre-rendered frames (one new
  frame per step, so one backbone pass per step), against the bare batch-1 forward of the same frames, paired and
  alternated step by step so that load from other processes hits both; and the wrapper's own step cost with a
  zero-cost backbone of the same output shape (noise-free for slow backbones, where the paired ratio is noise).

Usage: ``python benchmarks/bench_backbones.py [--backbones resnet18 dinov2] [--resolutions 112] [--seconds 1]``.
On a shared CPU the numbers are noisy; the overhead target is < 5%.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import gymnasium as gym
import numpy as np
import torch

from pvrw.backbones.registry import RandomWeightsWarning
from pvrw.pvr_wrappers import PVRObservation, create_backbone, list_backbones


class ReplayEnv(gym.Env):
    """Frame-stack-3 uint8 observations (9,H,W) from a pool of pre-made frames; costs microseconds per step."""

    def __init__(self, pool: np.ndarray, k: int = 3) -> None:
        self.pool, self.k = pool, k
        _, _, h, w = pool.shape
        self.observation_space = gym.spaces.Box(0, 255, (3 * k, h, w), np.uint8)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.t = 0

    def _obs(self) -> np.ndarray:
        idx = [(self.t - i) % len(self.pool) for i in reversed(range(self.k))]
        return self.pool[idx].reshape(3 * self.k, *self.pool.shape[2:])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, False, False, {}


def rate(fn, n_items: int, seconds: float, min_reps: int = 2) -> float:
    """Items per second of ``fn`` (one warm-up call, then repeated for at least ``seconds``)."""
    fn()
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return reps * n_items / (time.perf_counter() - start)


def overhead(backbone, pool: np.ndarray, steps: int) -> tuple[float, float]:
    """Median seconds per step, paired step by step: (bare batch-1 forward of the step's new frame,
    ``PVRObservation.step``). The order alternates every step so that load drift hits both alike."""
    env = PVRObservation(ReplayEnv(pool), backbone)
    env.reset()
    tensors = [torch.from_numpy(pool[i:i + 1]) for i in range(len(pool))]
    bare, wrapped = [], []
    for i in range(steps + 1):
        frame = tensors[(env.env.t + 1) % len(pool)]  # the frame the next env step shows
        order = ("bare", "wrapped") if i % 2 else ("wrapped", "bare")
        times = {}
        for what in order:
            start = time.perf_counter()
            if what == "bare":
                with torch.inference_mode():
                    backbone.model(backbone.preprocess(frame))
            else:
                env.step(None)
            times[what] = time.perf_counter() - start
        if i:  # step 0 is a warm-up
            bare.append(times["bare"])
            wrapped.append(times["wrapped"])
    # the reset stack holds 3 distinct frames, then exactly one new frame per step
    assert env.embedder.frames_embedded == 3 + steps + 1, env.embedder.frames_embedded
    return statistics.median(bare), statistics.median(wrapped)


class NullBackbone:
    """Same interface and output shape as a backbone, zero compute: isolates the wrapper's own cost."""

    def __init__(self, backbone) -> None:
        self.name, self.output_shape, self.fingerprint = backbone.name, backbone.output_shape, "null"

    def embed(self, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return np.zeros((len(frames), *self.output_shape), np.float32)


def wrapper_only_cost(backbone, pool: np.ndarray, steps: int = 300) -> float:
    """Median seconds per ``PVRObservation.step`` with a zero-cost backbone of the same output shape."""
    env = PVRObservation(ReplayEnv(pool), NullBackbone(backbone))
    env.reset()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        env.step(None)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "dinov2", "dinov2_reg", "vc1"])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[112, 224])
    parser.add_argument("--batch", type=int, default=8, help="batched measurement size")
    parser.add_argument("--seconds", type=float, default=1.5, help="minimum time per throughput measurement")
    parser.add_argument("--steps", type=int, default=0, help="paired overhead steps (0: auto, ~2 s of forwards)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", RandomWeightsWarning)
    gym.logger.min_level = 40  # silence the per-wrapper random-weights warning; the table says RANDOM
    unknown = set(args.backbones) - set(list_backbones())
    if unknown:
        raise SystemExit(f"unknown backbones {sorted(unknown)}; known: {list_backbones()}")

    rng = np.random.default_rng(0)
    rows = []
    for name in args.backbones:
        for side in args.resolutions:
            bb = create_backbone(name, weights="random", resolution=side)
            pool = rng.integers(0, 256, (16, 3, side, side), dtype=np.uint8)
            one = torch.from_numpy(pool[:1])
            many = torch.from_numpy(np.resize(pool, (args.batch, 3, side, side)))
            with torch.inference_mode():
                b1 = rate(lambda: bb.model(bb.preprocess(one)), 1, args.seconds)
                bn = rate(lambda: bb.model(bb.preprocess(many)), args.batch, args.seconds, min_reps=1)
            steps = args.steps or max(5, min(200, int(2 * b1)))
            bare, wrapped = overhead(bb, pool, steps)
            own = wrapper_only_cost(bb, pool)
            rows.append((name, side, bb.output_shape, b1, bn, bare * 1e3, wrapped * 1e3, wrapped / bare - 1,
                         own * 1e3, own / bare))
            print(f"  measured {name} @ {side}", flush=True)

    print(f"\nRANDOM weights; torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}. "
          "Overhead: frame stack 3, one new frame per step; 'paired' = median PVRObservation.step / median bare "
          "forward of the same frame, alternated step by step; 'own' = the wrapper's step time with a zero-cost "
          "backbone of the same output shape, relative to the bare forward.")
    header = (f"{'backbone':<11} {'side':>4} {'output':<14} {'img/s b=1':>9} {f'img/s b={args.batch}':>10} "
              f"{'bare ms':>8} {'wrapped ms':>10} {'paired':>7} {'own ms':>7} {'own %':>6}")
    print(header)
    print("-" * len(header))
    for name, side, shape, b1, bn, bare, wrapped, over, own, own_rel in rows:
        print(f"{name:<11} {side:>4} {str(shape):<14} {b1:>9.1f} {bn:>10.1f} {bare:>8.2f} {wrapped:>10.2f} "
              f"{over:>+7.1%} {own:>7.3f} {own_rel:>6.2%}")


if __name__ == "__main__":
    main()
