"""Frame-deduplicating n-step replay for ``Dict`` observations (pixels or PVR features plus proprioception).

SB3's ``DictReplayBuffer`` stores ``obs`` and ``next_obs`` whole for every key and has no n-step returns (SB3 asserts
``n_steps == 1`` for Dict spaces). :class:`DrMDictReplayBuffer` keeps one
:class:`~pvrw.drm.buffers.DrMReplayBuffer` per key, so every key's frames are stored once (a pixel stack
``(3k, H, W)`` as ``k`` frames, a PVR stack ``(k, D)`` as ``k`` embeddings, an unstacked vector once per step), and
returns the same n-step transitions as the Box buffer, as ``DictReplayBufferSamples``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, DictReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from pvrw.drm.buffers import DrMReplayBuffer
from pvrw.drm.policy_kwargs import observation_frame_stack


def default_replay_buffer(
    observation_space: spaces.Space, normalize_images: bool = True
) -> tuple[type[DrMReplayBuffer | DrMDictReplayBuffer], int | dict[str, int]]:
    """
    DrM's replay buffer for an observation space, and its ``frame_stack`` (image-like float inputs used with
    ``normalize_images=False`` count as RGB frames, see :func:`~pvrw.drm.policy_kwargs.observation_frame_stack`).

    :param observation_space: the (transposed) observation space
    :param normalize_images: the policy's ``normalize_images``
    :return: ``(buffer_class, frame_stack)``, ``frame_stack`` per key for a ``Dict``
    """
    if isinstance(observation_space, spaces.Dict):
        stacks = {key: observation_frame_stack(sub, normalize_images) for key, sub in observation_space.spaces.items()}
        return DrMDictReplayBuffer, stacks
    return DrMReplayBuffer, observation_frame_stack(observation_space, normalize_images)  # type: ignore[arg-type]


class _RewardNormalizer:
    """A ``VecNormalize`` seen by one key's buffer: it normalises rewards, the observation dict is normalised whole."""

    def __init__(self, env: VecNormalize):
        self.env = env

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        return obs

    def normalize_reward(self, reward: np.ndarray) -> np.ndarray:
        return self.env.normalize_reward(reward)


class DrMDictReplayBuffer(DictReplayBuffer):
    """
    :class:`~pvrw.drm.buffers.DrMReplayBuffer` for ``Dict`` observation spaces: one frame store per key, one set of
    n-step windows for all keys.

    Each key's buffer also keeps its own copy of actions, rewards and episode bookkeeping (a few dozen bytes per
    step and key, next to a frame of kilobytes); the transitions are drawn once, from the key with the smallest
    observation, and every key is rebuilt at the same steps. An episode starts for all keys when it starts for one
    (an ``obs`` that does not continue one key's stored ``next_obs``), so the windows agree.

    :param buffer_size: max number of transitions (all envs together, as in SB3)
    :param observation_space: a ``Dict`` of ``Box`` spaces
    :param action_space: action space
    :param device: PyTorch device of the sampled tensors
    :param n_envs: number of parallel environments
    :param optimize_memory_usage: not supported (frames are already stored once); must be False
    :param handle_timeout_termination: treat ``infos[i]["TimeLimit.truncated"]`` ends as non-terminal
    :param n_steps: number of rewards summed in the n-step return
    :param gamma: discount factor of the n-step return
    :param frame_stack: frames per observation of each key (``{key: k}``); missing keys (or None) are inferred by
        :func:`~pvrw.drm.buffers.infer_frame_stack`
    :param storage_dtype: dtype of the float keys' frames (e.g. ``np.float16``); None keeps each key's dtype
    :param n_step_rule: ``"reference"`` or ``"truncated"``, see :class:`~pvrw.drm.buffers.DrMReplayBuffer`
    :param frame_capacity: max frames per key (all envs together); None: as :class:`~pvrw.drm.buffers.DrMReplayBuffer`
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
        frame_stack: dict[str, int] | None = None,
        storage_dtype: np.typing.DTypeLike | None = None,
        n_step_rule: str = "reference",
        frame_capacity: int | None = None,
    ):
        if not isinstance(observation_space, spaces.Dict):
            raise TypeError(f"DrMDictReplayBuffer needs a Dict observation space, got {observation_space}.")
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        frame_stack = dict(frame_stack or {})
        unknown = sorted(set(frame_stack) - set(observation_space.spaces))
        if unknown:
            raise ValueError(f"frame_stack keys {unknown} are not observation keys {list(observation_space.spaces)}.")
        self.key_buffers: dict[str, DrMReplayBuffer] = {}
        for key, space in observation_space.spaces.items():
            floating = np.issubdtype(space.dtype, np.floating)
            self.key_buffers[key] = DrMReplayBuffer(
                buffer_size,
                space,
                action_space,
                device,
                n_envs,
                optimize_memory_usage,
                handle_timeout_termination,
                n_steps=n_steps,
                gamma=gamma,
                frame_stack=frame_stack.get(key),
                storage_dtype=storage_dtype if floating else None,
                n_step_rule=n_step_rule,
                frame_capacity=frame_capacity,
            )
        # transitions are drawn from (and returned by) the key whose observations are the cheapest to rebuild
        self.primary_key = min(self.key_buffers, key=lambda k: int(np.prod(observation_space.spaces[k].shape)))
        primary = self.key_buffers[self.primary_key]
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        self.n_steps, self.gamma, self.n_step_rule = n_steps, gamma, n_step_rule
        self.buffer_size = primary.buffer_size

    @property
    def primary(self) -> DrMReplayBuffer:
        """The key buffer whose transitions (actions, rewards, windows) are returned."""
        return self.key_buffers[self.primary_key]

    def _sync(self) -> None:
        self.pos, self.full = self.primary.pos, self.primary.full

    def reset(self) -> None:
        """Empty the buffer."""
        super(DictReplayBuffer, self).reset()
        for buffer in getattr(self, "key_buffers", {}).values():
            buffer.reset()

    def size(self) -> int:
        """:return: transitions stored per env"""
        return self.primary.size()

    def nbytes(self) -> int:
        """:return: bytes allocated by the key buffers' arrays"""
        return sum(buffer.nbytes() for buffer in self.key_buffers.values())

    def add(  # type: ignore[override]
        self,
        obs: dict[str, np.ndarray],
        next_obs: dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """
        Store one step of every env (whole stacks per key, as SB3 passes them), after checking every key, so that a
        refused step writes nothing.
        """
        missing = sorted(set(self.key_buffers) - set(obs)) or sorted(set(self.key_buffers) - set(next_obs))
        if missing:
            raise ValueError(f"add() got observations without the keys {missing}.")
        continues = np.ones(self.n_envs, dtype=bool)
        for key, buffer in self.key_buffers.items():
            try:
                key_obs = np.asarray(obs[key]).reshape((self.n_envs, *buffer.obs_shape))
                key_next = np.asarray(next_obs[key]).reshape((self.n_envs, *buffer.obs_shape))
            except ValueError as error:
                raise ValueError(
                    f"add() expects obs[{key!r}] and next_obs[{key!r}] of shape (n_envs={self.n_envs}, "
                    f"*{buffer.obs_shape}), got {np.shape(obs[key])} and {np.shape(next_obs[key])}."
                ) from error
            for env_idx in range(self.n_envs * (buffer.frame_stack > 1)):
                buffer._check_frame_shift(env_idx, key_obs[env_idx], key_next[env_idx])
            frames = buffer._as_frames(key_obs)
            buffer._as_frames(key_next)  # range check (float16 storage)
            for env_idx in range(self.n_envs):
                continues[env_idx] &= bool(buffer.episode_open[env_idx]) and buffer._stored_stack_equals(
                    env_idx, frames[env_idx]
                )
        for key, buffer in self.key_buffers.items():
            buffer.episode_open &= continues  # a new episode for one key is one for all
            buffer.add(obs[key], next_obs[key], action, reward, done, infos)
        self._sync()

    def sample(  # type: ignore[override]
        self, batch_size: int, env: VecNormalize | None = None
    ) -> DictReplayBufferSamples:
        """
        :param batch_size: number of transitions
        :param env: VecNormalize env to normalise observations and rewards with, if any
        :return: n-step transitions with Dict observations
        """
        batch_inds, env_indices = self.primary.sample_indices(batch_size)
        return self._get_samples(batch_inds, env=env, env_indices=env_indices)

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None, env_indices: np.ndarray | None = None
    ) -> DictReplayBufferSamples:
        if env_indices is None:
            env_indices = np.random.randint(0, self.n_envs, size=batch_inds.shape)
        primary = self.primary
        reward_env = None if env is None else _RewardNormalizer(env)
        samples = primary._get_samples(batch_inds, reward_env, env_indices)  # type: ignore[arg-type]
        lengths = primary.window_lengths(batch_inds, env_indices)
        obs, next_obs = {}, {}
        for key, buffer in self.key_buffers.items():
            newest = buffer.obs_frame[batch_inds, env_indices]
            obs[key] = buffer._stack(newest, env_indices)
            next_obs[key] = buffer._stack(newest + lengths, env_indices)
        obs, next_obs = self._normalize_obs(obs, env), self._normalize_obs(next_obs, env)
        return DictReplayBufferSamples(
            observations={key: self.to_torch(value) for key, value in obs.items()},
            actions=samples.actions,
            next_observations={key: self.to_torch(value) for key, value in next_obs.items()},
            dones=samples.dones,
            rewards=samples.rewards,
            discounts=samples.discounts,
        )

    @property  # type: ignore[override]
    def observations(self) -> dict[str, np.ndarray]:
        """Stacked ``obs`` of every slot and key (a full copy, see :attr:`DrMReplayBuffer.observations`)."""
        return {key: buffer.observations for key, buffer in self.key_buffers.items()}

    @property  # type: ignore[override]
    def next_observations(self) -> dict[str, np.ndarray]:
        """One-step ``next_obs`` of every slot and key (a full copy)."""
        return {key: buffer.next_observations for key, buffer in self.key_buffers.items()}
