"""DrM gradient updates per second at batch 256, full-size networks, side by side in one run.

Inputs (frame stack 3, 4 actions, as Meta-World): pixels at 112 and 224 (CnnPolicy, DrQ-v2 encoder + random shift),
CLS features 3 x 768 and CLS + 4 registers 3 x 3840 (MlpPolicy), PIE-G ResNet18 layer2 features 3 x 128 x 14 x 14 at
112 px (PiegPolicy). Each row fills a DrMReplayBuffer with random transitions, runs one warm-up update, then times
``DrM.train`` (replay sampling + the whole DrM update: dormant ratio, value, critic + encoder, actor, target EMA).

    python benchmarks/bench_drm_updates.py [--updates 3] [--threads 2] [--variant drm]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium.wrappers import FrameStackObservation
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

from pvrw.drm import DrM, trainable_parameter_counts

BATCH = 256


class RandomFrames(gym.Env):
    """Random frames (uint8 HWC images or float features); episodes of 50 steps."""

    def __init__(self, shape: tuple[int, ...], pixels: bool):
        self.pixels = pixels
        if pixels:
            self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        else:
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape, np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (4,), np.float32)

    def _frame(self) -> np.ndarray:
        if self.pixels:
            return self.np_random.integers(0, 256, self.observation_space.shape, dtype=np.uint8)
        return self.np_random.standard_normal(self.observation_space.shape).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        return self._frame(), 0.0, False, self.t >= 50, {}


def make_env(name: str):
    if name.startswith("pixels"):
        side = int(name.split("@")[1])
        return VecFrameStack(DummyVecEnv([lambda: RandomFrames((side, side, 3), pixels=True)]), n_stack=3)
    frame = {"cls": (768,), "cls+reg": (3840,), "pieg@112": (128, 14, 14)}[name]
    return FrameStackObservation(RandomFrames(frame, pixels=False), stack_size=3)


POLICIES = {
    "pixels@112": "CnnPolicy",
    "pixels@224": "CnnPolicy",
    "cls": "MlpPolicy",
    "cls+reg": "MlpPolicy",
    "pieg@112": "PiegPolicy",
}


def bench(name: str, updates: int, variant: str, fill: int) -> dict[str, float | str | int]:
    model = DrM(
        POLICIES[name], make_env(name), variant=variant, learning_starts=fill, buffer_size=fill + 10, seed=0, device="cpu"
    )
    model.learn(fill)  # random actions only: fills the buffer, no update yet
    model.train(gradient_steps=1, batch_size=BATCH)  # warm-up
    start = time.perf_counter()
    model.train(gradient_steps=updates, batch_size=BATCH)
    seconds = (time.perf_counter() - start) / updates
    obs_shape = "x".join(str(s) for s in model.observation_space.shape)
    return dict(
        input=name,
        policy=POLICIES[name],
        obs=obs_shape,
        params=trainable_parameter_counts(model)["total"],
        ms=1000 * seconds,
        ups=1.0 / seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=3, help="timed updates per input (after one warm-up)")
    parser.add_argument("--threads", type=int, default=th.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--variant", default="drm", choices=["drm", "drm_mw"])
    parser.add_argument("--fill", type=int, default=300, help="random transitions stored before timing")
    parser.add_argument("--inputs", nargs="*", default=list(POLICIES), choices=list(POLICIES))
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    print(
        f"DrM ({args.variant}) updates at batch {BATCH}, {args.updates} timed updates each, {args.threads} torch threads, CPU"
    )
    rows = [bench(name, args.updates, args.variant, args.fill) for name in args.inputs]
    base = rows[0]["ups"]
    print(f"| input | policy | observation | trainable params | ms / update | updates / s | vs {rows[0]['input']} |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['input']} | {row['policy']} | {row['obs']} | {row['params']:,} | {row['ms']:.0f} | "
            f"{row['ups']:.2f} | {row['ups'] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
