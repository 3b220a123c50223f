"""Does DrM learn from pixels, and does ``precision="bf16"`` learn as well as fp32? DrM vs SB3 pixel SAC, several seeds.

A benchmark, not a test (18 minutes on a shared 2-core Xeon with the defaults). The task, :class:`PointReach`, is cheap
enough for a CPU: a red agent dot and a green goal dot on a dark square, rendered with numpy to ``--size`` pixels (32)
uint8 RGB, 3 frames stacked (``(9, size, size)``, DrM's layout). Start and goal are drawn anew each episode, so the
policy must read both from the pixels. The 2-D action in ``[-1, 1]`` moves the agent by ``0.2 * action`` in a
``[-1, 1]^2`` arena; reward ``-distance`` each step, 25-step episodes; an episode succeeds if the final distance is
below 0.15 (the dots overlap). A random policy scores about -28, a scripted policy that reads the true positions about
-3 (the ``oracle`` row).

Every algorithm gets the same budget and replay settings: ``--steps`` environment steps, ``--warmup`` uniform random
steps, one gradient update per step, batch ``--batch``, a buffer holding the whole run, gamma 0.99, Adam lr ``--lr``
(1e-3: the budget is small) and the same encoder, the DrQ-v2 conv stack. DrM: ``CnnPolicy`` with random shifts of
``--aug-pad`` pixels (2: DrQ-v2's 4 at 84 px, scaled), ``hidden_dim=--hidden`` and ``feature_dim=50``; its mechanisms
keep their step schedules scaled to the budget as in ``bench_drm_learning.py`` (exploration std
``linear(1.0,0.1,steps/2)`` after awakening, a perturbation every ``steps / 2.4`` steps); ``drm-bf16`` is the same with
``precision="bf16"`` (fp32, with a warning, on CPUs without bf16). SAC: SB3 ``SAC("CnnPolicy")`` with the DrQ-v2 encoder
plus SB3's usual ``Linear(., 50) ReLU`` projection as its features extractor (SB3's ``NatureCNN`` does not fit 32-pixel
images), ``net_arch=[hidden, hidden]``, automatic entropy, no augmentation: the "pixel SAC" baseline of the DrQ papers.

The score of a run is the mean return and success rate of 10 deterministic episodes on held-out seeds (the same 10
episodes for every run). Runs go to ``--workers`` processes (spawned), each with ``--threads`` torch threads.

    python benchmarks/bench_drm_pixels.py [--steps 4000] [--seeds 0 1 2] [--algos drm-fp32 drm-bf16 sac] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

ALGOS = ("drm-fp32", "drm-bf16", "sac")
EVAL_SEED = 100_000
EVAL_EPISODES = 10
AGENT_RGB = np.array([230.0, 50.0, 40.0])
GOAL_RGB = np.array([40.0, 200.0, 60.0])


class PointReach(gym.Env):
    """
    Move a red dot onto a green goal dot, seen from pixels only. Channel-first uint8 frames ``(3, size, size)``.

    :param size: image side in pixels
    :param max_steps: episode length (truncation)
    :param speed: distance moved per step at ``|action| = 1``, per axis
    :param success_radius: an episode succeeds if the final agent-goal distance is below this
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, size: int = 32, max_steps: int = 25, speed: float = 0.2, success_radius: float = 0.15):
        self.size, self.max_steps, self.speed, self.success_radius = size, max_steps, speed, success_radius
        self.observation_space = spaces.Box(0, 255, (3, size, size), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # pixel centres in arena coordinates
        self._ys, self._xs = np.meshgrid(centres, centres, indexing="ij")
        self._radius = max(1.5, 0.06 * size) * 2.0 / size  # at least 1.5 px so small images keep both dots
        self.agent = np.zeros(2)
        self.goal = np.zeros(2)
        self._t = 0

    def _disk(self, centre: np.ndarray) -> np.ndarray:
        """Coverage in [0, 1] of each pixel by a dot (a one-pixel soft edge keeps sub-pixel positions visible)."""
        distance = np.sqrt((self._xs - centre[0]) ** 2 + (self._ys - centre[1]) ** 2)
        return np.clip((self._radius - distance) * self.size / 2.0 + 0.5, 0.0, 1.0)

    def render(self) -> np.ndarray:
        frame = np.full((3, self.size, self.size), 30.0)
        for centre, colour in ((self.goal, GOAL_RGB), (self.agent, AGENT_RGB)):  # the agent is drawn on top
            alpha = self._disk(centre)
            frame += alpha * (colour[:, None, None] - frame)
        return frame.astype(np.uint8)

    def _distance(self) -> float:
        return float(np.linalg.norm(self.agent - self.goal))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.agent = self.np_random.uniform(-0.9, 0.9, 2)
        self.goal = self.np_random.uniform(-0.9, 0.9, 2)
        self._t = 0
        return self.render(), {}

    def step(self, action: np.ndarray):
        self.agent = np.clip(self.agent + self.speed * np.clip(action, -1.0, 1.0), -1.0, 1.0)
        self._t += 1
        distance = self._distance()
        truncated = self._t >= self.max_steps
        info = {"distance": distance, "is_success": distance < self.success_radius} if truncated else {}
        return self.render(), -distance, False, truncated, info


Policy = Callable[[np.ndarray, PointReach], np.ndarray]  # (stacked frames, the unwrapped env) -> action


def random_policy(seed: int) -> Policy:
    """Uniform random actions."""
    rng = np.random.default_rng(seed)
    return lambda obs, env: rng.uniform(-1.0, 1.0, 2)


def oracle_policy(seed: int) -> Policy:
    """Straight at the goal, from the true positions (not the pixels): about the best score."""
    return lambda obs, env: np.clip((env.goal - env.agent) / env.speed, -1.0, 1.0)


REFERENCE_POLICIES = {"random": random_policy, "oracle": oracle_policy}


def make_env(size: int) -> gym.Env:
    """:class:`PointReach` with 3 frames stacked on the channel axis (pvrw's ``FrameStack``, first frame repeated)."""
    from stable_baselines3.common.monitor import Monitor

    from pvrw.envs.wrappers import FrameStack

    return Monitor(FrameStack(PointReach(size), 3, stack_init="repeat"))


def make_model(algo: str, seed: int, args: argparse.Namespace):
    common = dict(
        learning_rate=args.lr, batch_size=args.batch, gamma=0.99, learning_starts=args.warmup, buffer_size=args.steps,
        train_freq=args.train_freq, gradient_steps=1, seed=seed, device="cpu",
    )  # fmt: skip
    env = make_env(args.size)
    if algo.startswith("drm"):
        from pvrw.drm import DrM

        return DrM(
            "CnnPolicy",
            env,
            policy_kwargs=dict(hidden_dim=args.hidden, feature_dim=50, aug_pad=args.aug_pad),
            stddev_schedule=f"linear(1.0,0.1,{args.steps // 2})",
            dormant_perturb_interval=int(args.steps / 2.4),
            precision=algo.split("-")[1],
            **common,
        )
    from stable_baselines3 import SAC

    from pvrw.drm.networks import DrQEncoder

    extractor = dict(features_extractor_class=DrQEncoder, features_extractor_kwargs=dict(features_dim=50))
    policy_kwargs = dict(net_arch=[args.hidden, args.hidden], **extractor)
    return SAC("CnnPolicy", env, policy_kwargs=policy_kwargs, **common)


def evaluate(act: Policy, size: int) -> tuple[float, float]:
    """Mean return and success rate of :data:`EVAL_EPISODES` episodes on the held-out seeds; see :data:`Policy`."""
    env = make_env(size)
    returns, successes = [], []
    for episode in range(EVAL_EPISODES):
        obs, _ = env.reset(seed=EVAL_SEED + episode)
        total, done, info = 0.0, False, {}
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs, env.unwrapped))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        successes.append(float(info["is_success"]))
    return float(np.mean(returns)), float(np.mean(successes))


def run(algo: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one model (none for the reference policies) and evaluate it; runs in a worker process."""
    th.set_num_threads(args.threads)
    if algo in REFERENCE_POLICIES:
        mean_return, success = evaluate(REFERENCE_POLICIES[algo](seed), args.size)
        return dict(algo=algo, seed=seed, ret=mean_return, success=success, seconds=0.0)
    model = make_model(algo, seed, args)
    start = time.perf_counter()
    model.learn(args.steps)
    seconds = time.perf_counter() - start
    mean_return, success = evaluate(lambda obs, env: model.predict(obs, deterministic=True)[0], args.size)
    return dict(algo=algo, seed=seed, ret=mean_return, success=success, seconds=seconds)


def table(results: list[dict[str, Any]], order: list[str]) -> str:
    lines = [
        "| algorithm | final return, mean | std over seeds | success, mean | per-seed return | per-seed success "
        "| s / run |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for algo in order:
        rows = sorted((r for r in results if r["algo"] == algo), key=lambda r: r["seed"])
        if not rows:
            continue
        returns = np.array([r["ret"] for r in rows])
        success = np.array([r["success"] for r in rows])
        per_ret = ", ".join(f"{r:.1f}" for r in returns)
        per_succ = ", ".join(f"{s:.1f}" for s in success)
        seconds = "-" if algo in REFERENCE_POLICIES else f"{np.mean([r['seconds'] for r in rows]):.0f}"
        lines.append(
            f"| {algo} | {returns.mean():.1f} | {returns.std():.1f} | {success.mean():.2f} | {per_ret} | {per_succ} | "
            f"{seconds} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000, help="environment steps per run")
    parser.add_argument("--warmup", type=int, default=1000, help="uniform random steps before the first update")
    parser.add_argument("--train-freq", type=int, default=1, help="one gradient update every this many steps")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--algos", nargs="*", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (at least 15)")
    parser.add_argument("--batch", type=int, default=64, help="minibatch size")
    parser.add_argument("--hidden", type=int, default=256, help="hidden width of the actor/critic/value heads")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of every network")
    parser.add_argument("--aug-pad", type=int, default=2, help="DrM's random-shift padding in pixels (4 at 84 px)")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    args = parser.parse_args()
    print(
        f"PointReach {args.size}px x 3 frames: {args.steps} steps, {args.warmup} warm-up, an update every "
        f"{args.train_freq} step(s), batch {args.batch}, hidden {args.hidden}, lr {args.lr}, seeds {args.seeds}, "
        f"{args.workers} workers x {args.threads} threads",
        flush=True,
    )
    start = time.perf_counter()
    results = [run(policy, seed, args) for policy in REFERENCE_POLICIES for seed in args.seeds]
    # slowest first (SAC trains two encoders, bf16 is the fastest), so that the last round is short
    slowest_first = ("sac", "drm-fp32", "drm-bf16")
    jobs = sorted(((a, s) for s in args.seeds for a in args.algos), key=lambda job: slowest_first.index(job[0]))
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(run, algo, seed, args) for algo, seed in jobs]):
            result = future.result()
            results.append(result)
            print(
                f"  {result['algo']} seed {result['seed']}: return {result['ret']:.1f}, "
                f"success {result['success']:.1f} ({result['seconds']:.0f} s)",
                flush=True,
            )
    print(table(results, [*REFERENCE_POLICIES, *args.algos]))
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
