"""Does the DrM learner learn? DrM (MlpPolicy) vs SB3 TD3 and SAC on a state-based task, same budget, several seeds.

All algorithms get the same environment-step budget, the same number of random warm-up steps, one gradient update per
step, batch 256, gamma 0.99, Adam lr 1e-3 (the RL Zoo's Pendulum value for TD3 and SAC) and the same small hidden size
(CPU-friendly; DrM's reference nets are 1024 wide with lr 1e-4 for pixels). DrM keeps its mechanisms with its
step-based schedules scaled to the budget: exploration std ``linear(1.0, 0.1, steps / 2)`` after awakening and a
perturbation every ``steps / 2.4`` steps (the reference perturbs every 100k of 1.05M steps); n-step 3 (variant
``drm``). TD3 uses its default target smoothing and Gaussian action noise 0.1; SAC its automatic entropy.
The final return is the mean of 10 deterministic evaluation episodes after training.

    python benchmarks/bench_drm_learning.py [--env Pendulum-v1] [--steps 8000] [--seeds 0 1 2] [--hidden 64]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.noise import NormalActionNoise

from pvrw.drm import DrM


def make_model(algo: str, env_id: str, seed: int, steps: int, hidden: int, warmup: int):
    common = dict(learning_rate=1e-3, batch_size=256, gamma=0.99, learning_starts=warmup, train_freq=1, gradient_steps=1,
                  buffer_size=steps, seed=seed, device="cpu")  # fmt: skip
    env = gym.make(env_id)
    if algo == "drm":
        return DrM(
            "MlpPolicy",
            env,
            policy_kwargs=dict(hidden_dim=hidden, feature_dim=50),
            stddev_schedule=f"linear(1.0,0.1,{steps // 2})",
            dormant_perturb_interval=int(steps / 2.4),
            **common,
        )
    if algo == "td3":
        action_dim = env.action_space.shape[0]
        noise = NormalActionNoise(np.zeros(action_dim), 0.1 * np.ones(action_dim))
        return TD3("MlpPolicy", env, action_noise=noise, policy_kwargs=dict(net_arch=[hidden, hidden]), **common)
    return SAC("MlpPolicy", env, policy_kwargs=dict(net_arch=[hidden, hidden]), **common)


def run(algo: str, env_id: str, seed: int, steps: int, hidden: int, warmup: int) -> tuple[float, float]:
    model = make_model(algo, env_id, seed, steps, hidden, warmup)
    start = time.perf_counter()
    model.learn(steps)
    seconds = time.perf_counter() - start
    eval_env = Monitor(gym.make(env_id))
    eval_env.reset(seed=10_000 + seed)
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    return float(mean_return), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=8000, help="environment steps per run")
    parser.add_argument("--warmup", type=int, default=1000, help="random-action steps before updates")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of every network")
    parser.add_argument("--algos", nargs="*", default=["drm", "td3", "sac"], choices=["drm", "td3", "sac"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    print(f"{args.env}: {args.steps} steps, {args.warmup} warm-up, hidden {args.hidden}, seeds {args.seeds}")
    results: dict[str, list[tuple[float, float]]] = {}
    for algo in args.algos:
        for seed in args.seeds:
            results.setdefault(algo, []).append(run(algo, args.env, seed, args.steps, args.hidden, args.warmup))
            print(f"  {algo} seed {seed}: final return {results[algo][-1][0]:.1f} ({results[algo][-1][1]:.0f} s)", flush=True)
    print("| algorithm | final return, mean | std over seeds | min | max | per seed | s / run |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for algo, rows in results.items():
        returns = np.array([r for r, _ in rows])
        per_seed = ", ".join(f"{r:.0f}" for r in returns)
        name = "DrM" if algo == "drm" else algo.upper()
        print(
            f"| {name} | {returns.mean():.1f} | {returns.std():.1f} | {returns.min():.1f} | "
            f"{returns.max():.1f} | {per_seed} | {np.mean([s for _, s in rows]):.0f} |"
        )


if __name__ == "__main__":
    main()
