"""DrM policies: one encoder (trained by the critic loss only), actor, double-Q critic with its EMA target, value net.

- :class:`CnnPolicy`: pixels, DrQ-v2 encoder, random-shift augmentation (pad 4);
- :class:`MlpPolicy`: flat features such as PVR CLS tokens (``(k, D)`` observations are flattened), no encoder, no
  augmentation;
- :class:`PiegPolicy`: stacked spatial PVR features ``(k, C, h, w)`` through the PIE-G head, no augmentation (features
  are already embedded; a shift cannot be applied after a frozen encoder).

Unlike SB3's TD3/SAC policies (whose shared extractor is trained by the actor loss), the encoder here follows
DrQ-v2/DrM: a single encoder updated by the critic loss; actor and value losses see detached features.
"""

from __future__ import annotations

import copy
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import get_action_dim, is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from pvrw.drm.networks import (
    VARIANTS,
    Actor,
    Critic,
    DrQEncoder,
    PiegExtractor,
    RandomShiftsAug,
    ValueNetwork,
    sample_action,
    weight_init,
)


def make_drm_networks(
    observation_space: spaces.Space,
    action_dim: int,
    features_extractor_class: type[BaseFeaturesExtractor],
    features_extractor_kwargs: dict[str, Any] | None = None,
    variant: str = "drm",
    feature_dim: int = 50,
    hidden_dim: int = 1024,
) -> nn.ModuleDict:
    """
    Build DrM's trainable modules (not initialised, no target): ``encoder``, ``actor``, ``value_net``, ``critic``.

    Shared by :class:`DrMPolicy` and :func:`pvrw.drm.parameters.trainable_parameter_counts`, so that the counted
    networks are the trained ones.

    :param observation_space: the (preprocessed) observation space
    :param action_dim: action dimension
    :param features_extractor_class: encoder class (``DrQEncoder``, ``PiegExtractor``, ``FlattenExtractor``, ...)
    :param features_extractor_kwargs: its keyword arguments
    :param variant: ``"drm"`` (MLP Q-heads) or ``"drm_mw"`` (Dropout + LayerNorm Q-heads)
    :param feature_dim: trunk output size (50)
    :param hidden_dim: hidden layer size (1024)
    :return: the modules, in the reference's construction order
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown DrM variant {variant!r}, expected one of {VARIANTS}")
    encoder = features_extractor_class(observation_space, **(features_extractor_kwargs or {}))
    repr_dim = encoder.features_dim
    return nn.ModuleDict(
        dict(
            encoder=encoder,
            actor=Actor(repr_dim, action_dim, feature_dim, hidden_dim),
            value_net=ValueNetwork(repr_dim, feature_dim, hidden_dim),
            critic=Critic(repr_dim, action_dim, feature_dim, hidden_dim, variant),
        )
    )


class DrMPolicy(BasePolicy):
    """
    Policy class (encoder, actor, critic, critic target, value net and their optimizers) for DrM.

    :param observation_space: Observation space
    :param action_space: Action space (Box)
    :param lr_schedule: Learning rate schedule (could be constant)
    :param variant: ``"drm"`` (``agents/drm.py`` Q-heads) or ``"drm_mw"`` (``agents/drm_mw.py``: Dropout(0.01) +
        LayerNorm in the Q-heads)
    :param feature_dim: output size of the actor, critic and value trunks (``feature_dim``, 50)
    :param hidden_dim: hidden size of the heads (``hidden_dim``, 1024)
    :param augment: random-shift augmentation of training batches; None: on for image spaces, off otherwise
    :param aug_pad: random-shift padding in pixels (4)
    :param features_extractor_class: the encoder
    :param features_extractor_kwargs: keyword arguments for the encoder
    :param normalize_images: whether SB3 divides images by 255 before the encoder (the encoder subtracts 0.5)
    :param optimizer_class: optimizer of each of the four networks (Adam)
    :param optimizer_kwargs: its keyword arguments, excluding the learning rate
    """

    actor: Actor
    critic: Critic
    critic_target: Critic
    value_net: ValueNetwork
    features_extractor: BaseFeaturesExtractor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        variant: str = "drm",
        feature_dim: int = 50,
        hidden_dim: int = 1024,
        augment: bool | None = None,
        aug_pad: int = 4,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=True,
            normalize_images=normalize_images,
        )
        if not isinstance(action_space, spaces.Box):
            raise ValueError(f"DrM needs a continuous (Box) action space, got {action_space}")
        if augment is None:
            augment = is_image_space(observation_space, normalized_image=not normalize_images)
        if augment and len(observation_space.shape or ()) != 3:
            raise ValueError(
                f"Random-shift augmentation needs (C, H, W) observations, got shape {observation_space.shape}; "
                "pass augment=False (features cannot be shifted after a frozen encoder)"
            )
        self.variant = variant
        self.feature_dim = feature_dim
        self.hidden_dim = hidden_dim
        self.augment = bool(augment)
        self.aug_pad = aug_pad
        # Exploration std used by ``_predict(deterministic=False)``; DrM sets it from its schedule before acting.
        self.exploration_std = 1.0
        self._build(lr_schedule)

    def _build(self, lr_schedule: Schedule) -> None:
        networks = make_drm_networks(
            self.observation_space,
            get_action_dim(self.action_space),
            self.features_extractor_class,
            self.features_extractor_kwargs,
            self.variant,
            self.feature_dim,
            self.hidden_dim,
        )
        networks.apply(weight_init)
        self.features_extractor = networks["encoder"]
        self.actor = networks["actor"]
        self.value_net = networks["value_net"]
        self.critic = networks["critic"]
        self.critic_target = copy.deepcopy(self.critic)
        self.aug = RandomShiftsAug(self.aug_pad)

        # Four Adams as in the reference (encoder, actor, critic, value net); the encoder has none without parameters.
        # Adam's fused step (one kernel per tensor instead of ~10 small ops; same update up to fp32 rounding) unless the
        # user chose an implementation.
        kwargs = dict(self.optimizer_kwargs)
        if self.optimizer_class is th.optim.Adam and not {"fused", "foreach"} & set(kwargs):
            kwargs["fused"] = True

        def make_optimizer(module: nn.Module) -> th.optim.Optimizer:
            return self.optimizer_class(module.parameters(), lr=lr_schedule(1), **kwargs)

        has_encoder_params = any(True for _ in self.features_extractor.parameters())
        self.encoder_optimizer = make_optimizer(self.features_extractor) if has_encoder_params else None
        self.actor.optimizer = make_optimizer(self.actor)
        self.critic.optimizer = make_optimizer(self.critic)
        self.value_net.optimizer = make_optimizer(self.value_net)
        # The reference never switches the target critic to eval mode (dropout stays active in drm_mw targets).
        self.critic_target.train(True)
        self.critic_target.requires_grad_(False)

    @property
    def optimizers(self) -> list[th.optim.Optimizer]:
        """The optimizers whose learning rate follows the schedule (encoder first when it has parameters)."""
        optimizers = [self.actor.optimizer, self.critic.optimizer, self.value_net.optimizer]
        return ([self.encoder_optimizer] if self.encoder_optimizer is not None else []) + optimizers

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                lr_schedule=self._dummy_schedule,  # not needed to load the policy alone
                variant=self.variant,
                feature_dim=self.feature_dim,
                hidden_dim=self.hidden_dim,
                augment=self.augment,
                aug_pad=self.aug_pad,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
            )
        )
        return data

    def encode(self, observations: th.Tensor, augment: bool = False) -> th.Tensor:
        """
        Preprocess (SB3: images / 255), optionally random-shift, and encode observations.

        :param observations: a batch of raw observations
        :param augment: apply the random shift (only if the policy has augmentation on)
        :return: features (``repr_dim`` per sample)
        """
        if augment and self.augment and self.normalize_images and is_image_space(self.observation_space):
            # The reference's order: shift the raw 0-255 batch, then scale (SB3's preprocess_obs: float / 255).
            obs = self.aug(observations.float()).div_(255.0)
        else:
            obs = preprocess_obs(observations, self.observation_space, normalize_images=self.normalize_images)
            if augment and self.augment:
                obs = self.aug(obs)
        return self.features_extractor(obs)

    def forward(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(observation, deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        """Actor mean (``dist.mean``) when deterministic, else ``mean + exploration_std * N(0, 1)`` clamped (acting)."""
        mean = self.actor(self.encode(observation))  # type: ignore[arg-type]
        if deterministic:
            return mean
        return sample_action(mean, self.exploration_std, clip=None)

    def set_training_mode(self, mode: bool) -> None:
        """
        Put the policy in training or evaluation mode (dropout of the ``drm_mw`` critic); the target critic always
        stays in training mode, as in the reference.

        :param mode: True for training mode
        """
        self.train(mode)
        self.critic_target.train(True)


MlpPolicy = DrMPolicy


class CnnPolicy(DrMPolicy):
    """DrM policy for pixels: DrQ-v2 encoder and random-shift augmentation. See :class:`DrMPolicy`."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *args: Any,
        features_extractor_class: type[BaseFeaturesExtractor] = DrQEncoder,
        **kwargs: Any,
    ):
        if not is_image_space(observation_space, normalized_image=not kwargs.get("normalize_images", True)):
            raise ValueError(
                f"CnnPolicy needs image observations (uint8 Box in [0, 255], channel-first or -last), got "
                f"{observation_space}; use MlpPolicy for flat features or PiegPolicy for spatial PVR features"
            )
        super().__init__(
            observation_space, action_space, lr_schedule, *args, features_extractor_class=features_extractor_class, **kwargs
        )


class PiegPolicy(DrMPolicy):
    """
    DrM policy on stacked spatial PVR features ``(k, C, h, w)`` with the PIE-G head. See :class:`DrMPolicy`.

    The actor/critic/value trunks keep DrM's ``feature_dim`` (50), so that only the observation differs between the
    study's variants. PIE-G itself trained with ``feature_dim=256`` (``cfgs/piegconfig.yaml``): pass
    ``policy_kwargs=dict(feature_dim=256)`` to reproduce its trunks.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *args: Any,
        features_extractor_class: type[BaseFeaturesExtractor] = PiegExtractor,
        **kwargs: Any,
    ):
        super().__init__(
            observation_space, action_space, lr_schedule, *args, features_extractor_class=features_extractor_class, **kwargs
        )
