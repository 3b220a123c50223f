"""Tiny environments for the SB3-shaped DrM tests: images (uint8 or image-like float), Dict observations."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

TINY = dict(hidden_dim=16, feature_dim=8)
FAST = dict(learning_starts=12, batch_size=8, buffer_size=300, n_steps=2, policy_kwargs=TINY)


def fast(**policy_kwargs):
    """DrM arguments for a seconds-long run, with extra ``policy_kwargs``."""
    return {**FAST, "policy_kwargs": {**TINY, **policy_kwargs}}


class StackedImageEnv(gym.Env):
    """
    Channel-first stacks of ``k`` random RGB frames (oldest first), uint8 in [0, 255] or image-like float32 in [0, 1].

    :param side: image height and width
    :param k: frames per stack
    :param dtype: ``np.uint8`` or ``np.float32``
    :param episode_length: steps before truncation
    """

    def __init__(self, side=16, k=3, dtype=np.uint8, episode_length=20):
        self.dtype = np.dtype(dtype)
        high = 255 if self.dtype == np.uint8 else 1.0
        self.observation_space = spaces.Box(0, high, (3 * k, side, side), self.dtype)
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.k, self.side, self.episode_length = k, side, episode_length

    def _frame(self):
        frame = self.np_random.integers(0, 256, (3, self.side, self.side), dtype=np.uint8)
        return frame if self.dtype == np.uint8 else (frame / 255.0).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.frames = [self._frame() for _ in range(self.k)]
        return np.concatenate(self.frames), {}

    def step(self, action):
        self.t += 1
        self.frames = [*self.frames[1:], self._frame()]
        reward = float(-np.square(action).sum())
        return np.concatenate(self.frames), reward, False, self.t >= self.episode_length, {}


class DictObsEnv(gym.Env):
    """
    Dict observations: a stacked image (``pixels``, channel-last uint8 ``(H, W, 3k)``, transposed by SB3) or stacked
    per-frame features (``features``, float ``(k, D)`` as ``PVRObservation`` gives), plus unstacked proprioception
    (``proprio``, float ``(4,)``).

    :param kind: ``"pixels"`` or ``"features"``
    :param k: frames per stack
    :param episode_length: steps before truncation
    """

    def __init__(self, kind="pixels", k=3, side=16, feature_dim=6, episode_length=20):
        self.kind, self.k, self.side, self.feature_dim, self.episode_length = kind, k, side, feature_dim, episode_length
        if kind == "pixels":
            main = spaces.Box(0, 255, (side, side, 3 * k), np.uint8)
        else:
            main = spaces.Box(-np.inf, np.inf, (k, feature_dim), np.float32)
        self.observation_space = spaces.Dict({kind: main, "proprio": spaces.Box(-1, 1, (4,), np.float32)})
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)

    def _frame(self):
        if self.kind == "pixels":
            return self.np_random.integers(0, 256, (self.side, self.side, 3), dtype=np.uint8)
        return self.np_random.standard_normal((1, self.feature_dim)).astype(np.float32)

    def _obs(self):
        axis = -1 if self.kind == "pixels" else 0
        proprio = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        return {self.kind: np.concatenate(self.frames, axis=axis), "proprio": proprio}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.frames = [self._frame() for _ in range(self.k)]
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.frames = [*self.frames[1:], self._frame()]
        reward = float(-np.square(action).sum())
        return self._obs(), reward, False, self.t >= self.episode_length, {}
