"""Meta-World 3 for pixels, set up as in the DrM study: the task (camera, seeding, goals) and its scripted expert.

``make_env("metaworld/push-v3")`` gives DrM's Meta-World setting on Meta-World 3 / MuJoCo 3: camera ``corner4`` (DrM's
``corner2`` moved to ``(0.75, 0.075, 0.7)``), action repeat 2, 250 agent steps (500 simulator steps) per episode, a
fresh random object and goal every episode, the reward summed over repeated steps, no termination on success, frames
stacked on the channel axis with zero padding at reset. What Meta-World 3 gets wrong for pixels is fixed here:
``reset(seed=...)`` reseeds (Meta-World ignores it), the first frame after reset shows the new goal (Meta-World
positions it after the last ``mj_forward``), corner-camera images are upright, and several envs in one process each
render their own scene (see :mod:`pvrw.envs.rendering`). :func:`~pvrw.envs.factory.make_env` builds the whole
pixel env around :class:`MetaWorldTask`; :func:`scripted_expert` acts in it from the simulator state. Facts:
``shared/reference/metaworld.md``.
"""

from __future__ import annotations

import difflib
import functools
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pvrw._gl

mujoco = pvrw._gl.import_mujoco()  # before gymnasium's MuJoCo envs import it

import gymnasium as gym
import numpy as np

from pvrw.envs._checks import check_choice
from pvrw.envs.rendering import apply_render_quality, make_gl_context_current

DEFAULT_CAMERA = "corner4"
ORIENTATIONS = ("upright", "legacy")
GOAL_MODES = ("random", "fixed")
_METAWORLD_PREFIXES = ("metaworld/", "meta-world/")
_CORNER_CAMERAS = ("corner", "corner2", "corner3", "corner4")


def _metaworld_tasks() -> dict[str, type]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return ALL_V3_ENVIRONMENTS


def _check_task_name(task: str) -> str:
    tasks = _metaworld_tasks()
    if task in tasks:
        return task
    match = re.fullmatch(r"(.+)-v(\d+)", task)
    if match and f"{match.group(1)}-v3" in tasks:
        twin = f"{match.group(1)}-v3"
        raise ValueError(
            f"Meta-World task {task!r} does not exist: Meta-World 3 has only -v3 tasks. Use 'metaworld/{twin}', its "
            f"-v3 twin (same task and reward; note that v3 runs on MuJoCo 3, so its numbers are not directly "
            f"comparable with mujoco-py -v2 results)."
        )
    candidates = difflib.get_close_matches(task, list(tasks), n=5, cutoff=0.5)
    if not candidates and not match:
        candidates = difflib.get_close_matches(f"{task}-v3", list(tasks), n=5, cutoff=0.5)
    hint = f" Close names: {', '.join(f'metaworld/{c}' for c in candidates)}." if candidates else ""
    raise ValueError(
        f"Unknown Meta-World task {task!r}.{hint} Only -v3 tasks exist ({len(tasks)} of them, the keys of "
        "metaworld.env_dict.ALL_V3_ENVIRONMENTS)."
    )


def parse_metaworld_id(env_id: str) -> str | None:
    """Return the Meta-World task name of ``"metaworld/<task>-v3"``, or ``None`` for any other env id.

    :raises ValueError: for an unknown Meta-World task, or a bare task name without the ``metaworld/`` prefix.
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a string such as 'metaworld/push-v3', got {type(env_id).__name__}.")
    for prefix in _METAWORLD_PREFIXES:
        if env_id.lower().startswith(prefix):
            return _check_task_name(env_id[len(prefix):])
    if env_id in _metaworld_tasks():
        raise ValueError(f"{env_id!r} is a Meta-World task: write it as 'metaworld/{env_id}'.")
    return None



@functools.lru_cache(maxsize=16)
def benchmark_tasks(task_name: str, benchmark_seed: int = 0) -> tuple[Any, ...]:
    """The 50 fixed object/goal configurations of Meta-World's MT1 benchmark for ``task_name``."""
    import metaworld

    return tuple(metaworld.MT1(task_name, seed=benchmark_seed).train_tasks)


class MetaWorldTask(gym.Wrapper):
    """One Meta-World 3 task, one simulator step per ``step``, the 39-d state as observation, rendering set up.

    Use :func:`~pvrw.envs.factory.make_env` rather than this class directly.

    :param task_name: Meta-World task, e.g. ``"push-v3"``.
    :param resolution: rendered image height and width.
    :param camera: MuJoCo camera name (``"corner4"`` is DrM's camera).
    :param orientation: ``"upright"``: the true camera image, rotated by 180 degrees for the corner cameras, which
        are mounted upside down (upright and not mirrored). ``"legacy"``: the vertically flipped image that
        mujoco-py, and so DrM / TD-MPC2, produced; for the corner cameras it is upright but mirrored left-right.
    :param render_quality: ``"full"`` or ``"fast"``, see :func:`~pvrw.envs.rendering.apply_render_quality`.
    :param seed: seed of the object/goal sequence and action-space sampling; ``None`` draws one from the OS.
    :param goal_mode: ``"random"``: a fresh random object and goal every episode from the env's seed (DrM).
        ``"fixed"``: cycle deterministically through the 50 fixed configurations of the MT1 benchmark
        (``benchmark_tasks(task_name, benchmark_seed)``), episode i using configuration ``i % 50``; reset with
        ``options={"task_index": i}`` to pick one; ``reset(seed=...)`` restarts the cycle.
    :param benchmark_seed: seed of the 50 MT1 configurations (``goal_mode="fixed"`` only).
    :param max_sim_steps: simulator steps after which Meta-World truncates; ``None`` for no limit.
    :param reward_function_version: Meta-World's ``"v2"`` (default) or ``"v1"`` shaped reward.
    """

    def __init__(
        self,
        task_name: str,
        *,
        resolution: int = 112,
        camera: str = DEFAULT_CAMERA,
        orientation: str = "upright",
        render_quality: str = "full",
        seed: int | None = None,
        goal_mode: str = "random",
        benchmark_seed: int = 0,
        max_sim_steps: int | None = 500,
        reward_function_version: str = "v2",
        **env_kwargs: Any,
    ):
        task_name = _check_task_name(task_name)
        self.orientation = check_choice("orientation", orientation, ORIENTATIONS)
        self.goal_mode = check_choice("goal_mode", goal_mode, GOAL_MODES)
        raw = _metaworld_tasks()[task_name](
            render_mode="rgb_array",
            camera_name=camera,
            width=resolution,
            height=resolution,
            reward_function_version=reward_function_version,
            **env_kwargs,
        )
        if mujoco.mj_name2id(raw.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            names = [mujoco.mj_id2name(raw.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(raw.model.ncam)]
            raw.close()
            raise ValueError(f"Unknown Meta-World camera {camera!r}; cameras: {names} (DrM's is 'corner4').")
        super().__init__(raw)
        self.task_name = task_name
        self.camera = camera
        self.benchmark_seed = benchmark_seed
        apply_render_quality(raw.model, render_quality)
        raw.max_path_length = sys.maxsize if max_sim_steps is None else int(max_sim_steps)
        self._next_task_index = 0
        self.state_observation: np.ndarray | None = None
        if goal_mode == "random":
            self._set_random_goals(raw, task_name)
        self.reseed(seed)
        self._forward_writes = True  # from now on, see __setattr__

    # --- the base env of the wrapper chain --------------------------------------------------------------------------
    # Meta-World's env defines ``compute_reward(action, obs)``, which Stable-Baselines3's ``check_env`` takes for a
    # GoalEnv's (``hasattr(env.unwrapped, "compute_reward")``) and then demands Dict observations. The task is the
    # base env users see: ``env.unwrapped`` is this wrapper, which reads and writes the Meta-World env's attributes
    # (``model``, ``data``, ``_target_pos``, ``seed`` ...) except ``compute_reward``, still reachable as
    # ``env.unwrapped.metaworld_env.compute_reward`` or ``env.get_wrapper_attr("compute_reward")``.
    _HIDDEN_ATTRIBUTES = frozenset({"compute_reward"})

    @property
    def unwrapped(self) -> gym.Env:
        return self

    @property
    def metaworld_env(self) -> gym.Env:
        """The Meta-World simulator env (``SawyerXYZEnv``) this task drives."""
        return self.env.unwrapped

    def __getattr__(self, name: str) -> Any:
        env = self.__dict__.get("env")
        if env is None or name.startswith("__") or name in self._HIDDEN_ATTRIBUTES:
            raise AttributeError(
                f"{type(self).__name__!r} has no attribute {name!r}"
                + (" (Meta-World's is env.unwrapped.metaworld_env.compute_reward)" if name == "compute_reward" else "")
            )
        return getattr(env.unwrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # After __init__, a name the task does not have and the Meta-World env does is the Meta-World env's, as
        # before this wrapper was the base env (e.g. env.unwrapped._freeze_rand_vec = True)
        env = self.__dict__.get("env")
        if self.__dict__.get("_forward_writes") and name not in self.__dict__ and name in vars(env.unwrapped):
            setattr(env.unwrapped, name, value)
        else:
            super().__setattr__(name, value)

    @staticmethod
    def _set_random_goals(raw: Any, task_name: str) -> None:
        # As metaworld._make_tasks does, plus seeded_rand_vec so that goals come from the env's own np_random.
        from metaworld.env_dict import ML1_ARGS_KWARGS

        kwargs = {k: v for k, v in ML1_ARGS_KWARGS[task_name]["kwargs"].items() if k != "task_id"}
        raw._set_task_inner(**kwargs)
        raw._set_task_called = True
        raw._freeze_rand_vec = False
        raw.seeded_rand_vec = True
        if raw._partially_observable:  # MT1 tasks are goal-observable; the scripted expert reads the goal
            raw._partially_observable = False
            raw.__dict__.pop("sawyer_observation_space", None)

    def reseed(self, seed: int | None) -> None:
        """Seed the object/goal sequence (``goal_mode="random"``) and the action space; restart the fixed cycle."""
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.seed_in_use = int(seed)
        self.env.unwrapped.seed(self.seed_in_use)
        self._next_task_index = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        raw = self.env.unwrapped
        if seed is not None:
            self.reseed(seed)
        info: dict[str, Any] = {}
        if self.goal_mode == "fixed":
            tasks = benchmark_tasks(self.task_name, self.benchmark_seed)
            index = (options or {}).get("task_index", self._next_task_index)
            raw.set_task(tasks[index % len(tasks)])
            self._next_task_index = index % len(tasks) + 1
            info["task_index"] = index % len(tasks)
        raw.reset()
        # Meta-World positions the goal site (and e.g. the drawer) after its last mj_forward: without this the first
        # frame and state show the previous episode's goal.
        mujoco.mj_forward(raw.model, raw.data)
        raw._prev_obs = raw._get_curr_obs_combined_no_goal()
        self.state_observation = raw._get_obs()
        return self.state_observation.copy(), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        self.state_observation = obs
        return obs, reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        make_gl_context_current(self.env)
        frame = self.env.render()
        if self.orientation == "legacy":
            frame = frame[::-1]
        elif self.camera in _CORNER_CAMERAS:
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame)


def _find_metaworld_task(env: gym.Env) -> MetaWorldTask | None:
    while env is not None:
        if isinstance(env, MetaWorldTask):
            return env
        env = getattr(env, "env", None)
    return None


def scripted_expert(env: gym.Env) -> Callable[..., np.ndarray]:
    """Meta-World's scripted expert (``metaworld.policies``) for a :func:`~pvrw.envs.factory.make_env` Meta-World env.

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
