"""The pixel-env factory: :func:`make_env` (one env) and :func:`make_vec_env` (a Gymnasium vector env of them).

``make_env("metaworld/<task>-v3")`` wraps a :class:`~pvrw.envs.metaworld.MetaWorldTask`; any other Gymnasium id is
made with ``render_mode="rgb_array"`` and its rendered frames become the observations. Both then get action repeat,
a time limit, pixel observations and a frame stack (:mod:`pvrw.envs.wrappers`).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.wrappers import TimeLimit

from pvrw.envs._checks import check_choice
from pvrw.envs.metaworld import DEFAULT_CAMERA, GOAL_MODES, ORIENTATIONS, MetaWorldTask, parse_metaworld_id
from pvrw.envs.rendering import RENDER_QUALITIES, apply_render_quality, mujoco
from pvrw.envs.wrappers import STACK_INITS, ActionRepeat, FrameStack, PixelObservation

MIN_RESOLUTION, MAX_RESOLUTION = 16, 2048


def _check_resolution(resolution: Any) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f"resolution must be an integer number of pixels (e.g. 112 or 224), got {resolution!r}.")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(
            f"resolution {resolution} is not supported: use {MIN_RESOLUTION} to {MAX_RESOLUTION} pixels "
            "(the study uses 112 and 224)."
        )
    return int(resolution)



def make_gym_pixel_base(env_id: str, resolution: int, camera: str | None, render_quality: str, seed: int | None,
                        env_kwargs: dict[str, Any]) -> gym.Env:
    """``gym.make(env_id, render_mode="rgb_array")``, at ``resolution`` where the env takes width/height (MuJoCo),
    with ``render_quality`` applied to MuJoCo models and its RNG seeded without rendering."""
    kwargs = dict(env_kwargs, render_mode="rgb_array")
    if camera is not None:
        kwargs["camera_name"] = camera
    try:
        try:  # MuJoCo envs render at the requested size directly
            env = gym.make(env_id, width=resolution, height=resolution, **kwargs)
        except TypeError:
            env = gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise ValueError(
            f"{env_id!r} is neither a Meta-World id ('metaworld/<task>-v3') nor a registered Gymnasium id: {exc}"
        ) from exc
    except TypeError as exc:
        raise ValueError(
            f"Could not make {env_id!r} with {sorted(kwargs)} (camera= needs a MuJoCo env): {exc}") from exc
    model = getattr(env.unwrapped, "model", None)
    if isinstance(model, mujoco.MjModel):
        apply_render_quality(model, render_quality)
    if seed is not None:
        env.reset(seed=seed)  # seeds the env's RNG without rendering; the next reset continues from it
        env.action_space.seed(seed)
    return env



def make_env(
    env_id: str,
    resolution: int = 112,
    frame_stack: int = 3,
    action_repeat: int = 2,
    seed: int | None = None,
    camera: str | None = None,
    render_quality: str = "full",
    max_episode_steps: int | None = 250,
    *,
    stack_init: str = "zeros",
    orientation: str = "upright",
    goal_mode: str = "random",
    benchmark_seed: int = 0,
    reward_function_version: str = "v2",
    **env_kwargs: Any,
) -> gym.Env:
    """Make a pixel env: observations are uint8 ``(3 * frame_stack, resolution, resolution)``, oldest frame first.

    ``info["success"]`` (= ``info["is_success"]``): the task succeeded at any simulator step so far this episode;
    ``info["success_now"]``: success at the last simulator step of this agent step (on the final step, the
    final-timestep success the study reports). Episodes never terminate on success.

    :param env_id: ``"metaworld/<task>-v3"`` or any registered Gymnasium id with ``render_mode="rgb_array"``
        (its rendered frames, resized to ``resolution``, become the observations).
    :param resolution: image height and width in pixels (112 and 224 in the study).
    :param frame_stack: frames per observation (DrM: 3).
    :param action_repeat: simulator steps per agent step; rewards are summed (DrM: 2).
    :param seed: seed of the episode sequence (Meta-World: object and goal positions); ``reset(seed=...)`` reseeds.
    :param camera: camera name; ``None`` is ``"corner4"`` for Meta-World (DrM's camera) and the env's default else.
    :param render_quality: ``"full"`` (MuJoCo defaults, as the reference) or ``"fast"`` (no shadows, MSAA or
        reflections; about 9x faster on a CPU), see :func:`~pvrw.envs.rendering.apply_render_quality`. No effect on
        non-MuJoCo envs.
    :param max_episode_steps: episode length in agent steps (DrM: 250 = 500 Meta-World steps); ``None``: no extra
        limit. Non-Meta-World envs keep their registered limit (in simulator steps) as well.
    :param stack_init: ``"zeros"`` (DrM's Meta-World wrapper) or ``"repeat"`` (the first frame repeated, DMC-style).
    :param orientation: Meta-World only: ``"upright"`` or ``"legacy"`` (mujoco-py's mirrored view), see
        :class:`~pvrw.envs.metaworld.MetaWorldTask`.
    :param goal_mode: Meta-World only: ``"random"`` (training, DrM) or ``"fixed"`` (evaluation over the 50 MT1
        configurations in a deterministic cycle), see :class:`~pvrw.envs.metaworld.MetaWorldTask`.
    :param benchmark_seed: Meta-World only: seed of the 50 MT1 configurations used by ``goal_mode="fixed"``.
    :param reward_function_version: Meta-World only: ``"v2"`` (default) or ``"v1"``.
    :param env_kwargs: passed to the env constructor (Meta-World class or ``gym.make``).
    """
    resolution = _check_resolution(resolution)
    check_choice("render_quality", render_quality, RENDER_QUALITIES)
    if max_episode_steps is not None and (
        isinstance(max_episode_steps, bool)
        or not isinstance(max_episode_steps, (int, np.integer))
        or max_episode_steps < 1
    ):
        raise ValueError(f"max_episode_steps must be a positive integer or None, got {max_episode_steps!r}.")
    for name, value in (("frame_stack", frame_stack), ("action_repeat", action_repeat)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    check_choice("stack_init", stack_init, STACK_INITS)
    check_choice("orientation", orientation, ORIENTATIONS)
    check_choice("goal_mode", goal_mode, GOAL_MODES)
    task = parse_metaworld_id(env_id)
    if task is not None:
        base: gym.Env = MetaWorldTask(
            task,
            resolution=resolution,
            camera=camera or DEFAULT_CAMERA,
            orientation=orientation,
            render_quality=render_quality,
            seed=seed,
            goal_mode=goal_mode,
            benchmark_seed=benchmark_seed,
            max_sim_steps=None if max_episode_steps is None else max_episode_steps * action_repeat,
            reward_function_version=reward_function_version,
            **env_kwargs,
        )
    else:
        base = make_gym_pixel_base(env_id, resolution, camera, render_quality, seed, env_kwargs)
    env: gym.Env = ActionRepeat(base, action_repeat)
    if max_episode_steps is not None:
        env = TimeLimit(env, int(max_episode_steps))
    env = PixelObservation(env, resolution)
    return FrameStack(env, frame_stack, stack_init)


def _make_env_in_worker(env_id: str, render_threads: int | None, **kwargs: Any) -> gym.Env:
    # llvmpipe starts one render thread per core in every process; with one process per env that oversubscribes
    # the cores. Only in worker processes: the parent's own envs keep the default.
    if render_threads and multiprocessing.parent_process() is not None:
        os.environ.setdefault("LP_NUM_THREADS", str(render_threads))
    return make_env(env_id, **kwargs)


def make_vec_env(
    env_id: str,
    n_envs: int,
    seed: int | None = 0,
    vectorization_mode: str = "sync",
    *,
    context: str | None = None,
    autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
    worker_render_threads: int | None = 1,
    **make_env_kwargs: Any,
) -> VectorEnv:
    """A Gymnasium vector env of ``n_envs`` :func:`make_env` envs; sub-env ``i`` is seeded ``seed + i``.

    :param vectorization_mode: ``"sync"`` (one process; each env renders with its own GL context) or ``"async"``
        (one process per env).
    :param context: multiprocessing start method for ``"async"``; default ``"forkserver"`` (``"spawn"`` where
        unavailable). Never ``"fork"`` by default: forking a process in which OpenGL already rendered deadlocks.
    :param autoreset_mode: Gymnasium's autoreset mode (default ``NEXT_STEP``, Gymnasium's default).
    :param worker_render_threads: ``LP_NUM_THREADS`` set in async worker processes (software rendering threads per
        env; ``None`` leaves it alone). An ``LP_NUM_THREADS`` already exported wins.
    :param make_env_kwargs: passed to :func:`make_env` for every sub-env.
    """
    if int(n_envs) != n_envs or n_envs < 1:
        raise ValueError(f"n_envs must be an integer >= 1, got {n_envs!r}.")
    check_choice("vectorization_mode", vectorization_mode, ("sync", "async"))
    if "seed" in make_env_kwargs:
        raise TypeError("pass seed= once: sub-env i gets seed + i.")
    fns: list[Callable[[], gym.Env]] = [
        functools.partial(
            _make_env_in_worker,
            env_id,
            worker_render_threads if vectorization_mode == "async" else None,
            seed=None if seed is None else int(seed) + i,
            **make_env_kwargs,
        )
        for i in range(int(n_envs))
    ]
    if vectorization_mode == "sync":
        return SyncVectorEnv(fns, autoreset_mode=autoreset_mode)
    if context is None:
        context = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return AsyncVectorEnv(fns, context=context, autoreset_mode=autoreset_mode)
