"""n-step sampling for :class:`~pvrw.drm.buffers.DrMReplayBuffer`: which stored transitions may be drawn, and the
n-step returns built from them (the two rules, ``"reference"`` and ``"truncated"``, are described on the buffer).

A mixin of the buffer, split from its storage (frames stored once, stacks rebuilt) only to keep modules short.
"""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize


class NStepSampling:
    """
    Uniform sampling of complete (``"reference"``) or truncated n-step windows, and the n-step transitions they give.
    Mixed into :class:`~pvrw.drm.buffers.DrMReplayBuffer`, which sets the attributes below and provides ``_stack``
    (rebuild stacks from stored frames) and SB3's ``size``, ``to_torch``, ``_normalize_obs`` and ``_normalize_reward``.
    """

    # configuration
    n_steps: int
    gamma: float
    n_step_rule: str
    buffer_size: int
    n_envs: int
    frame_stack: int
    frame_capacity: int
    # storage
    obs_frame: np.ndarray
    frames_written: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    timeouts: np.ndarray
    pos: int
    full: bool

    def window_lengths(self, batch_inds: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        """
        :param batch_inds: transition slots
        :param env_indices: env of each slot
        :return: number of steps (1..n_steps) from each start that are stored and in the start's episode, up to
            and including the episode's last step
        """
        steps = np.arange(self.n_steps)
        window = self.obs_frame[(batch_inds[:, None] + steps) % self.buffer_size, env_indices[:, None]]
        # Inside an episode the newest obs frame advances by exactly one per step; a new episode stores its whole
        # first stack (a jump of k + 1), an unwritten slot holds -1 and the slot after the newest holds an older step.
        continues = window == window[:, :1] + steps
        return np.cumprod(continues, axis=1).sum(axis=1)

    def is_sampleable(self, batch_inds: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        """
        :param batch_inds: transition slots
        :param env_indices: env of each slot
        :return: whether each transition is stored, its frames are not overwritten and (reference rule) its full
            n-step window is stored inside its episode
        """
        newest = self.obs_frame[batch_inds, env_indices]
        valid = (newest >= 0) & (newest - self.frame_stack + 1 >= self.frames_written[env_indices] - self.frame_capacity)
        if self.n_step_rule == "reference":
            valid &= self.window_lengths(batch_inds, env_indices) == self.n_steps
        return valid

    def sampleable_mask(self) -> np.ndarray:
        """:return: ``(buffer_size, n_envs)`` bool array, True where :meth:`sample` may draw the transition"""
        slots, envs = np.meshgrid(np.arange(self.buffer_size), np.arange(self.n_envs), indexing="ij")
        return self.is_sampleable(slots.ravel(), envs.ravel()).reshape(self.buffer_size, self.n_envs)

    def sample_indices(self, batch_size: int, max_rejection_rounds: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """
        Draw transitions uniformly among the sampleable ones (rejection sampling, then an exact draw from the
        sampleable set for what is left).

        :param batch_size: number of transitions
        :param max_rejection_rounds: redraw rounds before falling back to enumerating the sampleable set
        :return: ``(batch_inds, env_indices)``
        """
        upper_bound = self.buffer_size if self.full else self.pos
        batch_inds = np.zeros(batch_size, dtype=np.int64)
        env_indices = np.zeros(batch_size, dtype=np.int64)
        todo = np.arange(batch_size)
        for _ in range(max_rejection_rounds if upper_bound > 0 else 0):
            batch_inds[todo] = np.random.randint(0, upper_bound, size=len(todo))
            env_indices[todo] = np.random.randint(0, self.n_envs, size=len(todo))
            todo = todo[~self.is_sampleable(batch_inds[todo], env_indices[todo])]
            if len(todo) == 0:
                return batch_inds, env_indices
        candidates = np.flatnonzero(self.sampleable_mask())
        if len(candidates) == 0:
            needed = "a stored step"
            if self.n_step_rule == "reference":
                needed = f"a complete {self.n_steps}-step window inside one episode"
            raise ValueError(
                f"DrMReplayBuffer has no sampleable transition yet: sampling needs {needed} "
                f"({self.size()} steps stored per env). Collect more steps before training (learning_starts >= "
                f"n_steps), or use n_step_rule='truncated' if episodes are shorter than n_steps={self.n_steps}."
            )
        chosen = candidates[np.random.randint(0, len(candidates), size=len(todo))]
        batch_inds[todo], env_indices[todo] = np.divmod(chosen, self.n_envs)
        return batch_inds, env_indices

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """
        :param batch_size: number of transitions
        :param env: VecNormalize env to normalise observations and rewards with, if any
        :return: n-step transitions (``rewards`` = discounted n-step return, ``discounts`` = gamma ** m)
        """
        batch_inds, env_indices = self.sample_indices(batch_size)
        return self._get_samples(batch_inds, env=env, env_indices=env_indices)

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None, env_indices: np.ndarray | None = None
    ) -> ReplayBufferSamples:
        """
        :param batch_inds: transition slots (start of each n-step window)
        :param env: VecNormalize env, if any
        :param env_indices: env of each slot; drawn uniformly when None, as SB3 does
        :return: the n-step transitions starting at these slots
        """
        if env_indices is None:
            env_indices = np.random.randint(0, self.n_envs, size=batch_inds.shape)
        steps = np.arange(self.n_steps)
        lengths = self.window_lengths(batch_inds, env_indices)
        mask = steps[None, :] < lengths[:, None]
        window = (batch_inds[:, None] + steps) % self.buffer_size
        rewards = self._normalize_reward(self.rewards[window, env_indices[:, None]], env)
        n_step_returns = (rewards * self.gamma ** steps.astype(np.float32) * mask).sum(axis=1, keepdims=True)
        discounts = self.gamma ** lengths[:, None].astype(np.float32)
        last = (batch_inds + lengths - 1) % self.buffer_size
        dones = self.dones[last, env_indices] * (1.0 - self.timeouts[last, env_indices])

        newest = self.obs_frame[batch_inds, env_indices]
        obs = self._normalize_obs(self._stack(newest, env_indices), env)
        next_obs = self._normalize_obs(self._stack(newest + lengths, env_indices), env)
        return ReplayBufferSamples(
            observations=self.to_torch(obs, copy=False),  # type: ignore[arg-type]
            actions=self.to_torch(self.actions[batch_inds, env_indices]),
            next_observations=self.to_torch(next_obs, copy=False),  # type: ignore[arg-type]
            dones=self.to_torch(dones[:, None].astype(np.float32)),
            rewards=self.to_torch(n_step_returns.astype(np.float32)),
            discounts=self.to_torch(discounts.astype(np.float32)),
        )
