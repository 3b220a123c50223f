"""Meta-World's scripted expert for a :func:`~pvrw.envs.factory.make_env` Meta-World env (for recording episodes)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from pvrw.envs.metaworld import MetaWorldTask


def _find_metaworld_task(env: gym.Env) -> MetaWorldTask | None:
    while env is not None:
        if isinstance(env, MetaWorldTask):
            return env
        env = getattr(env, "env", None)
    return None


def scripted_expert(env: gym.Env) -> Callable[..., np.ndarray]:
    """Meta-World's scripted expert (``metaworld.policies``) for a :func:`make_env` Meta-World env.

    The returned callable ignores its argument (pixels) and acts from the env's hidden simulator state, so call it
    after every ``reset``/``step`` of that env: ``action = expert(obs)``.
    """
    task = _find_metaworld_task(env)
    if task is None:
        raise ValueError(
            "scripted_expert needs a single Meta-World env from pvrw.make_env('metaworld/<task>-v3', ...); "
            f"got {type(env).__name__} (vector envs: use one expert per sub-env)."
        )
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[task.task_name]()

    def expert(_observation: Any = None) -> np.ndarray:
        if task.state_observation is None:
            raise RuntimeError("reset the env before asking the scripted expert for an action.")
        with warnings.catch_warnings():  # "Constant(s) may be too high": the policies clip on purpose
            warnings.simplefilter("ignore", UserWarning)
            action = policy.get_action(task.state_observation)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    return expert
