"""Run envs on Meta-World: pixel spaces from the config, deterministic evaluation tasks, policy choice."""

import gymnasium as gym
import numpy as np

from pvrw.runs.config import build_config
from pvrw.runs.envs import default_policy, make_run_env


def test_metaworld_eval_env_replays_the_same_tasks_after_a_seeded_reset():
    config = build_config({"resolution": 48, "env_kwargs": {"render_quality": "fast", "max_episode_steps": 5}})
    env = make_run_env(config, evaluation=True)
    try:
        assert env.observation_space == gym.spaces.Box(0, 255, (9, 48, 48), np.uint8)

        def first_frames(n):
            frames = [env.reset(seed=123)[0]]
            for _ in range(n - 1):
                # step once: the first observation of an episode is zero-padded, the goal shows from step 1
                frames.append(env.step(np.zeros(4, np.float32))[0])
                frames.append(env.reset()[0])
            return frames

        a, b = first_frames(3), first_frames(3)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert not np.array_equal(a[1], a[3])  # consecutive episodes use different fixed configurations
        assert default_policy(config, env.observation_space) == "CnnPolicy"
    finally:
        env.close()
