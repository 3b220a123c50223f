"""Frame-deduplicating n-step replay buffer for DrM.

A frame-stacked observation ``(k * c, H, W)`` shares ``k - 1`` frames with the next one, and SB3's
:class:`~stable_baselines3.common.buffers.ReplayBuffer` stores both ``obs`` and ``next_obs`` whole, so every frame is
kept ``2k`` times (DrQ-v2/DrM store the stack once per step: ``k`` times). :class:`DrMReplayBuffer` stores every
frame (or per-frame embedding) once per environment, in a ring, and rebuilds the stacks at sample time. It returns
the same :class:`~stable_baselines3.common.type_aliases.ReplayBufferSamples` as SB3's ``NStepReplayBuffer``
(``discounts`` = gamma ** m for the m rewards summed, ``dones`` = true termination at the end of the window).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, ReplayBuffer
from stable_baselines3.common.preprocessing import is_image_space_channels_first

from pvrw.drm.replay_storage import ReplayStorageMixin
from pvrw.drm.sampling import NStepSampling

N_STEP_RULES = ("reference", "truncated")
FLOAT16_MAX = float(np.finfo(np.float16).max)
# Default frame slack: room for `buffer_size` transitions when episodes average at least this many steps.
EPISODE_LENGTH_HINT = 100


def infer_frame_stack(observation_space: spaces.Box) -> int:
    """
    Number of frames stacked along axis 0 of an observation, guessed from its space.

    - uint8 channel-first image ``(3k, H, W)``: ``k`` RGB frames (what ``VecFrameStack`` / pvrw's ``make_env`` give);
    - float array ``(k, ...)`` with two or more axes: ``k`` rows (what ``PVRObservation`` gives: one embedding per frame);
    - anything else (flat vectors, channel-last images, channel counts that are not a multiple of 3): 1.

    Pass ``frame_stack`` explicitly for other layouts, e.g. 4 stacked grayscale frames ``(4, H, W)``.

    :param observation_space: the observation space of the environment
    :return: the number of frames in one observation
    """
    shape = observation_space.shape
    if observation_space.dtype == np.uint8 and len(shape) == 3:
        if is_image_space_channels_first(observation_space) and shape[0] % 3 == 0:
            return shape[0] // 3
        return 1
    if np.issubdtype(observation_space.dtype, np.floating) and len(shape) >= 2:
        return shape[0]
    return 1


class DrMReplayBuffer(ReplayStorageMixin, NStepSampling, ReplayBuffer):
    """
    Replay buffer that stores each frame once and returns n-step transitions, as DrM/DrQ-v2 train on.

    Storage, per environment: a ring of ``frame_capacity // n_envs`` frames and a ring of ``buffer_size // n_envs``
    transition slots (action, reward, done, timeout and the position of the newest frame of ``obs``). At the start
    of an episode the whole first stack is stored, then only the newest frame of each ``next_obs``: an episode of
    ``L`` steps costs ``k + L`` frames. Both rings are first-in first-out; a transition whose oldest frame has been
    overwritten is no longer sampled.

    Sampling rules (``n_step_rule``):

    - ``"reference"`` (default, DrQ-v2/DrM ``replay_buffer.py``): only starts whose ``n`` steps lie in one episode and
      are all stored are sampled, so every sample sums exactly ``n`` rewards and ``discounts`` is ``gamma ** n``.
      The last ``n - 1`` steps of an episode appear only inside windows (an episode shorter than ``n`` steps is never
      sampled). Time-limit ends are not terminal
      (``dones`` is 1 only for a true termination; with ``handle_timeout_termination=False`` every end is terminal).
      Deliberate differences from the reference's data pipeline, which change no target: starts are drawn uniformly
      over stored transitions (the reference draws an episode, then a step: the same distribution when episodes
      have equal length, as in Meta-World and DMC), and steps of the running episode are sampleable as soon as their
      window is stored (the reference waits for the episode's file to be written).
    - ``"truncated"`` (SB3 ``NStepReplayBuffer``): every stored transition is a start; its window stops at the first
      episode end (done or timeout, inclusive) or at the newest stored step, ``discounts`` is ``gamma ** m`` for the
      ``m <= n`` rewards summed, and ``dones = done * (1 - timeout)`` at the window's last step.

    Observations passed to :meth:`add` are whole stacks, as SB3 passes them. :meth:`add` checks that ``next_obs``
    is ``obs`` shifted by one frame (else the observation is not a frame stack and ``frame_stack=1`` is needed).
    An ``obs`` that does not continue the stored ``next_obs`` of an open episode (e.g. ``learn()`` was called again
    and reset the env) starts a new episode: windows never cross it, and the cut step bootstraps.

    :param buffer_size: max number of transitions (all envs together, as in SB3)
    :param observation_space: a ``Box`` observation space (Dict spaces are not supported)
    :param action_space: action space
    :param device: PyTorch device of the sampled tensors
    :param n_envs: number of parallel environments
    :param optimize_memory_usage: not supported (frames are already stored once); must be False
    :param handle_timeout_termination: treat ``infos[i]["TimeLimit.truncated"]`` ends as non-terminal
    :param n_steps: number of rewards summed in the n-step return
    :param gamma: discount factor of the n-step return
    :param frame_stack: frames per observation along axis 0; ``None`` infers it with :func:`infer_frame_stack`
    :param storage_dtype: dtype frames are stored in; ``None`` keeps the observation dtype. ``np.float16`` halves the
        memory of float embeddings; samples are cast back to the observation dtype. float16 keeps 11 significant
        bits (relative rounding error up to 2**-11 ~= 4.9e-4) and overflows above 65504, which :meth:`add` refuses.
    :param n_step_rule: ``"reference"`` (DrQ-v2/DrM, full windows only) or ``"truncated"`` (SB3), see above
    :param frame_capacity: max number of stored frames (all envs together). ``None``: ``buffer_size`` plus
        ``frame_stack`` frames per ``EPISODE_LENGTH_HINT`` (100) steps, enough for ``buffer_size`` transitions when
        episodes average at least 100 steps. With shorter episodes the oldest transitions are evicted earlier.
    :param storage: ``"memory"`` (numpy arrays; pickles hold the filled part only) or ``"disk"`` (memory-mapped files
        in ``path``, incremental :meth:`checkpoint`, :meth:`open`): see :mod:`pvrw.drm.replay_storage`
    :param path: a new (or empty) directory for ``storage="disk"``
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        *,
        n_steps: int = 3,
        gamma: float = 0.99,
        frame_stack: int | None = None,
        storage_dtype: np.typing.DTypeLike | None = None,
        n_step_rule: str = "reference",
        frame_capacity: int | None = None,
        storage: str = "memory",
        path: str | os.PathLike | None = None,
    ):
        # ReplayBuffer.__init__ would allocate stacked `observations` / `next_observations`: skip it.
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(f"DrMReplayBuffer needs a Box observation space, got {observation_space}.")
        if optimize_memory_usage:
            raise NotImplementedError(
                "DrMReplayBuffer already stores each frame once; optimize_memory_usage=True is not supported, leave it False."
            )
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}.")
        if n_step_rule not in N_STEP_RULES:
            raise ValueError(f"n_step_rule must be one of {N_STEP_RULES}, got {n_step_rule!r}.")
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        self.n_steps = n_steps
        self.gamma = gamma
        self.n_step_rule = n_step_rule
        self.buffer_size = max(buffer_size // n_envs, 1)

        self.frame_stack = infer_frame_stack(observation_space) if frame_stack is None else int(frame_stack)
        if self.frame_stack < 1 or self.obs_shape[0] % self.frame_stack != 0:
            raise ValueError(
                f"frame_stack={self.frame_stack} does not divide axis 0 of the observation shape {self.obs_shape}."
            )
        self.frame_shape = (self.obs_shape[0] // self.frame_stack, *self.obs_shape[1:])
        self.storage_dtype = np.dtype(observation_space.dtype if storage_dtype is None else storage_dtype)
        if self.storage_dtype != observation_space.dtype and not (
            np.issubdtype(observation_space.dtype, np.floating) and np.issubdtype(self.storage_dtype, np.floating)
        ):
            raise ValueError(
                f"storage_dtype={self.storage_dtype} is only for float observations (got {observation_space.dtype}); "
                "leave it None for images."
            )
        if frame_capacity is None:
            per_env = self.buffer_size + self.frame_stack * -(-self.buffer_size // EPISODE_LENGTH_HINT)
        else:
            per_env = frame_capacity // n_envs
        # the newest stack plus one next frame must always fit
        self.frame_capacity = max(per_env, self.frame_stack + 1)

        self._reset_episode_state()
        # frames (ring of frame_capacity), obs_frame (absolute index of the newest frame of `obs`; -1: never
        # written), actions, rewards, dones, timeouts (ring of buffer_size), per env
        self._init_storage(storage, path)

    # ------------------------------------------------------------------ storage
    def _reset_episode_state(self) -> None:
        # per env; the newest stored frame (that of the last next_obs) has absolute index frames_written - 1
        self.frames_written = np.zeros(self.n_envs, dtype=np.int64)
        self.episode_open = np.zeros(self.n_envs, dtype=bool)

    def reset(self) -> None:
        """Empty the buffer."""
        super().reset()
        self._before_fill("obs_frame")
        self.obs_frame.fill(-1)
        self._reset_episode_state()

    def _ring(self, absolute: np.ndarray) -> np.ndarray:
        return absolute % self.frame_capacity

    def _write_frames(self, env_idx: int, frames: np.ndarray) -> None:
        start = self.frames_written[env_idx]
        self.frames[self._ring(start + np.arange(len(frames))), env_idx] = frames
        self.frames_written[env_idx] += len(frames)

    def _as_frames(self, obs: np.ndarray) -> np.ndarray:
        """Split ``(n_envs, *shape)`` observations into ``(n_envs, frames, *frame_shape)`` in the storage dtype."""
        frames = obs.reshape(len(obs), -1, *self.frame_shape)
        if frames.dtype == self.storage_dtype:
            return frames
        if self.storage_dtype == np.float16 and np.any(np.abs(frames[np.isfinite(frames)]) > FLOAT16_MAX):
            raise ValueError(
                f"An observation value exceeds the float16 range (|x| > {FLOAT16_MAX}); "
                "use storage_dtype=np.float32 (or None) for these features."
            )
        return frames.astype(self.storage_dtype)

    def _check_frame_shift(self, env_idx: int, obs: np.ndarray, next_obs: np.ndarray) -> None:
        k = self.frame_stack
        obs_frames, next_frames = obs.reshape(k, *self.frame_shape), next_obs.reshape(k, *self.frame_shape)
        if not np.array_equal(next_frames[:-1], obs_frames[1:], equal_nan=obs.dtype.kind == "f"):
            how = "inferred from the observation space" if k == infer_frame_stack(self.observation_space) else "given"
            raise ValueError(
                f"DrMReplayBuffer(frame_stack={k}, {how}) splits each observation {self.obs_shape} along axis 0 into "
                f"{k} frames {self.frame_shape} and stores each frame once, so next_obs must be obs shifted by one "
                "frame (oldest first, as VecFrameStack, FrameStackObservation, pvrw's make_env and PVRObservation "
                f"stack them). For env {env_idx} the older frames of next_obs differ from the newer ones of obs: these "
                "observations are not frame stacks. Pass frame_stack=1 (replay_buffer_kwargs=dict(frame_stack=1)) "
                "to store them whole."
            )

    def _stored_stack_equals(self, env_idx: int, frames: np.ndarray) -> bool:
        newest = self.frames_written[env_idx] - 1
        stored = self.frames[self._ring(newest - np.arange(self.frame_stack - 1, -1, -1)), env_idx]
        return np.array_equal(stored, frames, equal_nan=frames.dtype.kind == "f")

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """
        Store one step of every env. ``obs`` and ``next_obs`` are whole stacks (``next_obs`` is the terminal
        observation where ``done``), as ``OffPolicyAlgorithm._store_transition`` passes them.

        :param obs: observations, shape ``(n_envs, *obs_shape)``
        :param next_obs: next observations, same shape
        :param action: actions, ``(n_envs, action_dim)``
        :param reward: rewards, ``(n_envs,)``
        :param done: episode ends (termination or truncation), ``(n_envs,)``
        :param infos: one info dict per env; ``"TimeLimit.truncated"`` marks time-limit ends
        """
        try:
            obs = np.asarray(obs).reshape((self.n_envs, *self.obs_shape))
            next_obs = np.asarray(next_obs).reshape((self.n_envs, *self.obs_shape))
        except ValueError as error:
            raise ValueError(
                f"add() expects obs and next_obs of shape (n_envs={self.n_envs}, *{self.obs_shape}), "
                f"got {np.shape(obs)} and {np.shape(next_obs)}."
            ) from error
        done = np.asarray(done, dtype=bool).reshape(self.n_envs)
        # check everything before writing anything
        for env_idx in range(self.n_envs * (self.frame_stack > 1)):
            self._check_frame_shift(env_idx, obs[env_idx], next_obs[env_idx])
        obs_frames, next_frames = self._as_frames(obs), self._as_frames(next_obs[:, -self.frame_shape[0] :])
        self._before_add()
        for env_idx in range(self.n_envs):
            if not (self.episode_open[env_idx] and self._stored_stack_equals(env_idx, obs_frames[env_idx])):
                self._write_frames(env_idx, obs_frames[env_idx])  # a new episode: its whole first stack
            self.obs_frame[self.pos, env_idx] = self.frames_written[env_idx] - 1
            self._write_frames(env_idx, next_frames[env_idx])
        self.episode_open = ~done

        self.actions[self.pos] = np.asarray(action).reshape((self.n_envs, self.action_dim))
        self.rewards[self.pos] = np.asarray(reward)
        self.dones[self.pos] = done
        if self.handle_timeout_termination:
            self.timeouts[self.pos] = np.array([info.get("TimeLimit.truncated", False) for info in infos])
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    # ------------------------------------------------- stacks (sampling rules: sampling.py)
    def _stack(self, newest: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        """Rebuild ``(B, *obs_shape)`` stacks whose newest frames have absolute indices ``newest``."""
        frames = self._gather_frames(newest - self.frame_stack + 1, env_indices)
        return frames.reshape(len(newest), *self.obs_shape).astype(self.observation_space.dtype, copy=False)
