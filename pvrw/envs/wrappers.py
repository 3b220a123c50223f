"""Generic Gymnasium wrappers behind :func:`pvrw.make_env`: action repeat with success bookkeeping, rendered frames as
channel-first observations, and channel-axis frame stacking. Rendering itself (one GL context per MuJoCo env) is in
:mod:`pvrw.envs.rendering`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pvrw.envs.rendering import install_gl_finalizer, render_frame, resize_frame

STACK_INITS = ("zeros", "repeat")


def success_flag(info: dict[str, Any]) -> bool:
    """The per-step success flag of an env's ``info`` (Meta-World ``success``, or a generic ``is_success``)."""
    return bool(info.get("success", info.get("is_success", False)))



class ActionRepeat(gym.Wrapper):
    """Repeat each action ``repeat`` times, sum the rewards, and report success as the study counts it.

    ``info["success"]`` (and its SB3 alias ``info["is_success"]``): the task succeeded at any simulator step so far
    this episode. ``info["success_now"]``: the success flag of the last simulator step of this agent step. The
    repeat stops early when the inner env terminates or truncates. Other info keys come from the last inner step.

    :param env: env whose ``info`` may carry a per-step ``success`` (or ``is_success``) flag.
    :param repeat: simulator steps per agent step (DrM uses 2).
    """

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        if int(repeat) != repeat or repeat < 1:
            raise ValueError(f"action_repeat must be an integer >= 1, got {repeat!r}.")
        self.repeat = int(repeat)
        self._episode_success = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._episode_success = False
        return self.env.reset(seed=seed, options=options)

    def step(self, action) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        total_reward = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            success_now = success_flag(info)
            self._episode_success |= success_now
            if terminated or truncated:
                break
        info = dict(info)
        info["success_now"] = success_now
        info["success"] = self._episode_success
        info["is_success"] = self._episode_success
        return obs, total_reward, terminated, truncated, info


class PixelObservation(gym.ObservationWrapper):
    """Replace the observation by the rendered frame, resized to ``resolution`` and channel-first ``(3, H, W)`` uint8.

    The env must have ``render_mode="rgb_array"``. MuJoCo envs render with their own GL context current, and their GL
    resources are released safely on close and garbage collection (see the module docstring).

    :param env: env to render.
    :param resolution: output height and width in pixels.
    """

    def __init__(self, env: gym.Env, resolution: int):
        super().__init__(env)
        self.resolution = int(resolution)
        self.observation_space = spaces.Box(0, 255, (3, self.resolution, self.resolution), np.uint8)
        self._gl_finalizer = install_gl_finalizer(env)

    def observation(self, observation: Any) -> np.ndarray:
        frame = resize_frame(render_frame(self.env), self.resolution, self.resolution)
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def close(self) -> None:
        if self._gl_finalizer is not None:
            self._gl_finalizer()
        super().close()


class FrameStack(gym.Wrapper):
    """Stack the last ``num_stack`` channel-first observations on the channel axis, oldest first.

    :param env: env with a ``Box`` observation space of shape ``(C, H, W)``.
    :param num_stack: number of frames in a stack.
    :param stack_init: how the stack is filled at reset: ``"zeros"`` (older slots are black, as DrM's Meta-World
        wrapper does) or ``"repeat"`` (the first frame is repeated, as DrM's / DrQ-v2's DMC wrapper does).
    """

    def __init__(self, env: gym.Env, num_stack: int, stack_init: str = "zeros"):
        super().__init__(env)
        if int(num_stack) != num_stack or num_stack < 1:
            raise ValueError(f"frame_stack must be an integer >= 1, got {num_stack!r}.")
        if stack_init not in STACK_INITS:
            raise ValueError(f"stack_init must be one of {STACK_INITS}, got {stack_init!r}.")
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 3:
            raise ValueError(f"FrameStack needs a (C, H, W) Box observation space, got {space}.")
        self.num_stack = int(num_stack)
        self.stack_init = stack_init
        self._frames: deque[np.ndarray] = deque(maxlen=self.num_stack)
        reps = (self.num_stack, 1, 1)
        self.observation_space = spaces.Box(np.tile(space.low, reps), np.tile(space.high, reps), dtype=space.dtype)

    def _stacked(self) -> np.ndarray:
        return np.concatenate(list(self._frames), axis=0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        fill = np.zeros_like(obs) if self.stack_init == "zeros" else obs
        self._frames.extend([fill] * (self.num_stack - 1) + [obs])
        return self._stacked(), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(obs)
        return self._stacked(), reward, terminated, truncated, info
