"""Tiny, fast Gymnasium envs for the CLI/runs tests (registered on import; use as "test_runs_tinyenv:TinyPixels-v0" with tests/ on sys.path).

``TinyPixels``: a 2-D point that must reach a goal; observations are channel-first uint8 frame stacks like
make_env's (3*frame_stack, H, W); ``info`` carries make_env's ``success`` (any step so far), ``success_now``
(this step) and ``is_success``. Episodes are ``max_steps`` long (truncation only).
"""

from __future__ import annotations

import os
import time
from typing import ClassVar

import gymnasium as gym
import numpy as np


class TinyPixels(gym.Env):
    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self, size: int = 36, frame_stack: int = 2, max_steps: int = 20, render_mode: str | None = "rgb_array"
    ):
        self.size, self.frame_stack, self.max_steps, self.render_mode = size, frame_stack, max_steps, render_mode
        self.observation_space = gym.spaces.Box(0, 255, (3 * frame_stack, size, size), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _frame(self) -> np.ndarray:
        img = np.zeros((3, self.size, self.size), np.uint8)
        p = np.clip(((self.pos + 1) / 2 * (self.size - 1)).round().astype(int), 0, self.size - 1)
        g = np.clip(((self.goal + 1) / 2 * (self.size - 1)).round().astype(int), 0, self.size - 1)
        img[0, p[1], p[0]] = 255
        img[1, g[1], g[0]] = 255
        return img

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.goal = self.np_random.uniform(-1, 1, 2)
        self.t, self.ever = 0, False
        self.frames = [self._frame()] * self.frame_stack
        return np.concatenate(self.frames), {"success": 0.0, "success_now": 0.0, "is_success": 0.0}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.2 * np.asarray(action, dtype=float), -1, 1)
        self.t += 1
        dist = float(np.linalg.norm(self.pos - self.goal))
        now = dist < 0.3
        self.ever = self.ever or now
        self.frames = [*self.frames[1:], self._frame()]
        info = {"success": float(self.ever), "success_now": float(now), "is_success": float(self.ever)}
        return np.concatenate(self.frames), -dist, False, self.t >= self.max_steps, info

    def render(self):
        return np.ascontiguousarray(self.frames[-1].transpose(1, 2, 0))


if "TinyPixels-v0" not in gym.registry:
    gym.register("TinyPixels-v0", entry_point=TinyPixels)


class TinyState(TinyPixels):
    """:class:`TinyPixels` with the state ``(pos, goal)`` as a float32 observation (still renders frames)."""

    def __init__(self, max_steps: int = 20, render_mode: str | None = "rgb_array"):
        super().__init__(size=36, frame_stack=1, max_steps=max_steps, render_mode=render_mode)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

    def _state(self) -> np.ndarray:
        return np.concatenate([self.pos, self.goal]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        _, info = super().reset(seed=seed, options=options)
        return self._state(), info

    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        return self._state(), reward, terminated, truncated, info


if "TinyState-v0" not in gym.registry:
    gym.register("TinyState-v0", entry_point=TinyState)


class GatedState(TinyState):
    """:class:`TinyState` that waits at its first step until the file ``gate`` exists (holds a run mid-training)."""

    def __init__(self, gate: str, max_steps: int = 20, render_mode: str | None = "rgb_array"):
        super().__init__(max_steps=max_steps, render_mode=render_mode)
        self.gate = gate

    def step(self, action):
        while not os.path.exists(self.gate):
            time.sleep(0.02)
        return super().step(action)


if "GatedState-v0" not in gym.registry:
    gym.register("GatedState-v0", entry_point=GatedState)
