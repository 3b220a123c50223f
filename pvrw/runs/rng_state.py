"""The random and rollout state of a run that ``model.zip`` does not hold, saved with each checkpoint (``state.pkl``).

With it a run killed at any moment and resumed from its last checkpoint continues exactly as the unbroken run would
have (on CPU): the global generators (Python, NumPy, torch: replay sampling, exploration noise, augmentation), the
agent's action space (random exploration), every generator held by the training and evaluation envs and their
wrappers (task/goal sampling, a feature wrapper's augmentation), and the training env's position in its episode.

A simulator's mid-episode state cannot be captured, so checkpoints fall on episode boundaries (the callback defers a
due checkpoint to the end of the episode). There the env has already been reset for the next episode (SB3 resets
inside ``step``), so :class:`RecordResetState` remembers the random states each reset started from; a resume
restores them into the new env and resets it again, which gives back the same first observation.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np

STATE_VERSION = 1


def global_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (and CUDA's, once initialised)."""
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_state` captured."""
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _generator_like(state: dict[str, Any]) -> np.random.Generator:
    generator = np.random.Generator(getattr(np.random, state["bit_generator"])())
    generator.bit_generator.state = state
    return generator


def space_rng_state(space: gym.spaces.Space) -> dict[str, Any]:
    """The generator state of ``space`` and of its sub-spaces (``Dict``, ``Tuple``); ``None`` where none was made."""
    rng = space._np_random
    state: dict[str, Any] = {"rng": None if rng is None else rng.bit_generator.state}
    subspaces = getattr(space, "spaces", None)
    if isinstance(subspaces, dict):
        state["spaces"] = {key: space_rng_state(sub) for key, sub in subspaces.items()}
    elif isinstance(subspaces, (tuple, list)):
        state["spaces"] = [space_rng_state(sub) for sub in subspaces]
    return state


def set_space_rng_state(space: gym.spaces.Space, state: dict[str, Any]) -> None:
    """Restore what :func:`space_rng_state` captured."""
    space._np_random = None if state["rng"] is None else _generator_like(state["rng"])
    subspaces = getattr(space, "spaces", None)
    if isinstance(subspaces, dict):
        for key, sub in subspaces.items():
            set_space_rng_state(sub, state["spaces"][key])
    elif isinstance(subspaces, (tuple, list)):
        for sub, sub_state in zip(subspaces, state["spaces"]):
            set_space_rng_state(sub, sub_state)


def _layers(env: gym.Env) -> Iterator[gym.Env]:
    while True:
        yield env
        if not isinstance(env, gym.Wrapper):
            return
        env = env.env


def env_rng_state(env: gym.Env) -> dict[str, Any]:
    """The generators held by ``env`` and each wrapper under it: NumPy generators and spaces found in their attributes.

    Keys name the layer and the attribute (``"3.TimeLimit.x"``), so a state only goes back into an env built the same
    way.
    """
    state: dict[str, Any] = {}
    for index, layer in enumerate(_layers(env)):
        for attr, value in vars(layer).items():
            key = f"{index}.{type(layer).__name__}.{attr}"
            if isinstance(value, np.random.Generator):
                state[key] = ("generator", value.bit_generator.state)
            elif isinstance(value, np.random.RandomState):
                state[key] = ("random_state", value.get_state())
            elif isinstance(value, gym.spaces.Space):
                state[key] = ("space", space_rng_state(value))
    return state


def set_env_rng_state(env: gym.Env, state: dict[str, Any]) -> bool:
    """Restore what :func:`env_rng_state` captured; ``False`` (nothing restored) if ``env`` is built differently."""
    layers = {f"{index}.{type(layer).__name__}": layer for index, layer in enumerate(_layers(env))}
    found = {f"{name}.{attr}": value for name, layer in layers.items() for attr, value in vars(layer).items()}
    found = {key: value for key, value in found.items() if _kind(value) is not None}
    # Made on first use, a generator (gymnasium's Env._np_random) or a space (a cached property) may exist on one
    # side only: a generator is set on its layer, a space matters only if it was ever sampled.
    if any(key not in state and not _unused_space(value) for key, value in found.items()):
        return False
    for key, (kind, saved) in state.items():
        if key in found:
            if _kind(found[key]) != kind:
                return False
        elif (kind == "space" and not _unsampled(saved)) or key.rpartition(".")[0] not in layers:
            return False
    for key, (kind, saved) in state.items():
        value = found.get(key)
        if kind == "generator":
            if value is not None and value.bit_generator.state["bit_generator"] == saved["bit_generator"]:
                value.bit_generator.state = saved  # in place: other references to this generator follow
            else:
                name, _, attr = key.rpartition(".")
                setattr(layers[name], attr, _generator_like(saved))
        elif kind == "random_state":
            if value is None:
                name, _, attr = key.rpartition(".")
                value = np.random.RandomState()
                setattr(layers[name], attr, value)
            value.set_state(saved)
        elif value is not None:
            set_space_rng_state(value, saved)
    return True


def _unsampled(space_state: dict[str, Any]) -> bool:
    subs = space_state.get("spaces", ())
    return space_state["rng"] is None and all(map(_unsampled, subs.values() if isinstance(subs, dict) else subs))


def _unused_space(value: Any) -> bool:
    return isinstance(value, gym.spaces.Space) and _unsampled(space_rng_state(value))


def _kind(value: Any) -> str | None:
    if isinstance(value, np.random.Generator):
        return "generator"
    if isinstance(value, np.random.RandomState):
        return "random_state"
    return "space" if isinstance(value, gym.spaces.Space) else None


class RecordResetState(gym.Wrapper):
    """Remembers the random states (global and the wrapped env's) each ``reset`` started from, and its arguments.

    :ivar last_reset: ``{"global": ..., "env": ..., "kwargs": ...}`` of the latest reset (``None`` before the first)
    :ivar steps_since_reset: steps taken since that reset (0: the env is at the start of an episode)
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.last_reset: dict[str, Any] | None = None
        self.steps_since_reset = 0

    def reset(self, **kwargs: Any):
        self.last_reset = {"global": global_rng_state(), "env": env_rng_state(self.env), "kwargs": dict(kwargs)}
        self.steps_since_reset = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any):
        self.steps_since_reset += 1
        return self.env.step(action)


def _sub_envs(model: Any) -> list[gym.Env] | None:
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = model.get_env()
    return list(venv.envs) if isinstance(venv, DummyVecEnv) else None


def _reset_recorders(model: Any) -> list[RecordResetState] | None:
    from pvrw.runs.evaluation import find_wrapper

    envs = _sub_envs(model)
    recorders = None if envs is None else [find_wrapper(env, RecordResetState) for env in envs]
    return None if recorders is None or None in recorders else recorders


def at_episode_start(model: Any) -> bool:
    """Whether every training env of ``model`` is at the start of an episode, with the state it started from known."""
    recorders = _reset_recorders(model)
    return recorders is not None and all(r.steps_since_reset == 0 and r.last_reset is not None for r in recorders)


def records_resets(model: Any) -> bool:
    """Whether ``model``'s training envs are ones whose episode-start state a checkpoint can hold (DummyVecEnv of
    envs wrapped in :class:`RecordResetState`)."""
    return _reset_recorders(model) is not None


def capture_run_state(model: Any, eval_env: gym.Env | None) -> dict[str, Any]:
    """Everything :func:`restore_run_state` needs, as a picklable dict (call it between rollouts)."""
    recorders = _reset_recorders(model)
    return {
        "version": STATE_VERSION,
        "global": global_rng_state(),
        "action_space": space_rng_state(model.action_space),
        "train_envs": [r.last_reset for r in recorders] if at_episode_start(model) and recorders else None,
        "eval_env": None if eval_env is None else env_rng_state(eval_env),
        "last_obs": model._last_obs,  # SB3's load drops it; kept to check that the env's reset gives it back
    }


def _obs_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)


def restore_run_state(model: Any, eval_env: gym.Env | None, state: dict[str, Any] | None) -> list[str]:
    """Put ``model`` (just loaded onto new envs) and ``eval_env`` back in the state :func:`capture_run_state` saw.

    Without a saved training-env state, SB3 resets the env at the next ``learn`` (the run continues, but not as the
    unbroken run would have).

    :return: why the resumed run will not be bit-identical to an unbroken one (empty when it will be).
    """
    if state is None:
        model._last_obs = None
        return ["the checkpoint holds no random state (written by an older pvrw)"]
    problems: list[str] = []
    envs, recorders = _sub_envs(model), _reset_recorders(model)
    saved_envs = state["train_envs"]
    if saved_envs is None or envs is None or recorders is None or len(saved_envs) != len(envs):
        model._last_obs = None  # SB3 resets the new env when learning starts
        problems.append("the checkpoint is not at an episode boundary" if saved_envs is None else "the env changed")
    else:
        venv = model.get_env()
        for index, (env, recorder, saved) in enumerate(zip(envs, recorders, saved_envs)):
            set_global_rng_state(saved["global"])
            if not set_env_rng_state(recorder.env, saved["env"]):
                problems.append("the training env is not built as the checkpoint's was")
            obs, venv.reset_infos[index] = env.reset(**saved["kwargs"])
            venv._save_obs(index, obs)
        venv._reset_seeds()  # loading seeded the env again (SB3's set_random_seed); the unbroken run had no seed left
        venv._reset_options()
        last_obs = venv._obs_from_buf()
        if not _obs_equal(last_obs, state["last_obs"]):
            problems.append("the training env's first observation after reset differs from the checkpoint's")
        model._last_obs = last_obs
    if eval_env is not None and state["eval_env"] is not None and not set_env_rng_state(eval_env, state["eval_env"]):
        problems.append("the evaluation env is not built as the checkpoint's was")
    venv_space = model.get_env().action_space
    if venv_space == model.action_space:
        model.action_space = venv_space  # as in a new model: the agent samples the env's own action space
    set_space_rng_state(model.action_space, state["action_space"])
    set_global_rng_state(state["global"])
    return problems
