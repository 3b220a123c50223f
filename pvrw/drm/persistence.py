"""DrM's overrides of Stable-Baselines3's saving and loading, and of the env check they share with the constructor.

A mixin of :class:`~pvrw.drm.drm.DrM`, split from the SB3 algorithm (acting, the training loop) only to keep modules
short: the checks of saved files are in :mod:`pvrw.drm.saved`, the disk buffer's relative references in
:mod:`pvrw.drm.replay_storage`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import torch as th
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.vec_env import VecEnv

from pvrw.drm.saved import check_model_zip, load_replay_buffer_file

if TYPE_CHECKING:
    from pvrw.drm.policies import DrMPolicy


class DrMPersistence:
    """
    ``load``, the replay-buffer ``save_replay_buffer`` / ``load_replay_buffer`` and what a save holds. Mixed into
    :class:`~pvrw.drm.drm.DrM` in front of SB3's ``OffPolicyAlgorithm``, whose methods these call through ``super()``.
    """

    policy: DrMPolicy

    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        # SB3 takes a Gymnasium VectorEnv (e.g. pvrw's make_vec_env) for a single env and fails with a message about
        # OpenAI Gym; say what to use instead (used by __init__, set_env and load).
        if isinstance(env, gym.vector.VectorEnv):
            raise TypeError(
                "DrM, like every Stable-Baselines3 algorithm, takes one gymnasium.Env or an SB3 VecEnv, not a "
                f"Gymnasium {type(env).__name__} (what pvrw.make_vec_env returns). For several envs use "
                "DummyVecEnv([lambda: make_env(...)] * n) or SubprocVecEnv (stable_baselines3.common.vec_env), wrapped "
                "in pvrw.VecPVRObservation for features."
            )
        return OffPolicyAlgorithm._wrap_env(env, verbose, monitor_wrapper)

    @classmethod
    def load(cls, path: Any, env: GymEnv | None = None, device: th.device | str = "auto", **kwargs: Any) -> Any:
        """SB3's ``load``, after checking the file: a missing file is named as given (not ``path.zip.zip``), a
        truncated or damaged zip or a model of another algorithm (``holds a SAC model: use SAC.load``) raise a
        :class:`~pvrw.drm.saved.SavedModelError` naming the file."""
        return super().load(check_model_zip(path, cls), env=env, device=device, **kwargs)  # type: ignore[misc]

    def save_replay_buffer(self, path: Any) -> None:
        """SB3's ``save_replay_buffer``; a disk buffer's reference names its storage relative to the file's folder."""
        from pvrw.drm.replay_storage import pickle_directory

        with pickle_directory(path):
            super().save_replay_buffer(path)  # type: ignore[misc]

    def load_replay_buffer(self, path: Any, truncate_last_traj: bool = True) -> None:
        """SB3's ``load_replay_buffer``; a missing file is named as given, a damaged one is a ``SavedModelError``."""
        load = super().load_replay_buffer  # type: ignore[misc]
        load_replay_buffer_file(path, lambda resolved: load(resolved, truncate_last_traj))

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),  # type: ignore[misc]
            "actor",
            "critic",
            "critic_target",
            "value_net",
        ]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "actor.optimizer", "critic.optimizer"]
        if self.policy.value_net is not None:  # DrQ-v2 has none
            state_dicts.append("value_net.optimizer")
        if self.policy.encoder_optimizer is not None:
            state_dicts.append("policy.encoder_optimizer")
        return state_dicts, []
