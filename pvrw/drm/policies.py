"""DrM policies: one encoder (trained by the critic loss only), actor, double-Q critic with its EMA target, value net.

- :class:`CnnPolicy`: pixels, DrQ-v2 encoder, random-shift augmentation (pad 4);
- :class:`MlpPolicy`: flat features such as PVR CLS tokens (``(k, D)`` observations are flattened), no encoder, no
  augmentation;
- :class:`PiegPolicy`: stacked spatial PVR features ``(k, C, h, w)`` through the PIE-G head, no augmentation (features
  are already embedded; a shift cannot be applied after a frozen encoder);
- :class:`MultiInputPolicy`: ``Dict`` observations (pixels or PVR features plus e.g. proprioception), the DrQ-v2
  encoder on every image key (random-shifted), the other keys flattened.

Unlike SB3's TD3/SAC policies (whose shared extractor is trained by the actor loss), the encoder here follows
DrQ-v2/DrM: a single encoder updated by the critic loss; actor and value losses see detached features. SB3's
``policy_kwargs`` are taken as SB3 spells them (:mod:`pvrw.drm.policy_kwargs`); ``share_features_extractor=False``
gives the actor its own encoder, trained by the actor loss (a deviation from DrM).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import get_action_dim, is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from pvrw.drm.extractors import DrMCombinedExtractor
from pvrw.drm.networks import (
    VARIANTS,
    Actor,
    Critic,
    DrQEncoder,
    PiegExtractor,
    RandomShiftsAug,
    ValueNetwork,
    sample_action,
    scale_images,
    weight_init,
)
from pvrw.drm.policy_kwargs import NetArch, image_keys, resolve_net_arch


def make_drm_networks(
    observation_space: spaces.Space,
    action_dim: int,
    features_extractor_class: type[BaseFeaturesExtractor],
    features_extractor_kwargs: dict[str, Any] | None = None,
    variant: str = "drm",
    feature_dim: int = 50,
    hidden_dim: int = 1024,
    net_arch: NetArch = None,
    activation_fn: type[nn.Module] | None = None,
    n_critics: int = 2,
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
    :param net_arch: SB3's ``net_arch`` (see :func:`~pvrw.drm.policy_kwargs.resolve_net_arch`); None: the reference
    :param activation_fn: activation of the heads; None: the reference's (in-place) ReLU
    :param n_critics: number of Q heads (2: clipped double Q)
    :return: the modules, in the reference's construction order
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown DrM variant {variant!r}, expected one of {VARIANTS}")
    encoder = features_extractor_class(observation_space, **(features_extractor_kwargs or {}))
    repr_dim = encoder.features_dim
    heads = resolve_net_arch(net_arch)
    return nn.ModuleDict(
        dict(
            encoder=encoder,
            actor=Actor(repr_dim, action_dim, feature_dim, hidden_dim, heads["pi"], activation_fn),
            value_net=ValueNetwork(repr_dim, feature_dim, hidden_dim, heads["vf"], activation_fn),
            critic=Critic(
                repr_dim, action_dim, feature_dim, hidden_dim, variant, heads["qf"], activation_fn, n_critics
            ),
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
    :param aug_method: ``"grid_sample"`` (the reference's bilinear sampling) or ``"index"``: an exact pixel gather on
        the replay's bytes, 2-3x faster, differing from the reference by its grid rounding; see :class:`RandomShiftsAug`
    :param net_arch: SB3's ``net_arch``: hidden widths of every head (list) or per head (dict ``pi`` / ``qf`` /
        ``vf``); None: two layers of ``hidden_dim`` (the reference)
    :param activation_fn: activation of the heads (None: the reference's ReLU)
    :param n_critics: number of Q heads, the TD target takes their minimum (2)
    :param share_features_extractor: True (DrM): one encoder, trained by the critic loss, the actor sees its detached
        features. False: the actor gets its own encoder, trained by the actor loss (not in DrM; SB3's TD3 default)
    :param features_extractor_class: the encoder, any SB3 ``BaseFeaturesExtractor`` (e.g. ``NatureCNN``)
    :param features_extractor_kwargs: keyword arguments for the encoder (``features_dim`` for the DrQ-v2 encoder: an
        optional projection; None: its flat conv output, as the reference)
    :param normalize_images: whether SB3 divides images by 255 before the encoder (the encoder subtracts 0.5). With
        False, float ``(C, H, W)`` inputs count as images (random shift, ``CnnPolicy``)
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
        aug_method: str = "grid_sample",
        net_arch: NetArch = None,
        activation_fn: type[nn.Module] | None = None,
        n_critics: int = 2,
        share_features_extractor: bool = True,
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
        if not normalize_images and issubclass(features_extractor_class, DrMCombinedExtractor):
            self.features_extractor_kwargs.setdefault("normalized_image", True)
        self.image_keys = image_keys(observation_space, normalize_images)
        if augment is None:
            augment = bool(self.image_keys)
        if augment and not self.image_keys:
            raise ValueError(
                f"Random-shift augmentation needs (C, H, W) image observations, got {observation_space}; "
                "pass augment=False (features cannot be shifted after a frozen encoder)"
            )
        self.variant = variant
        self.feature_dim = feature_dim
        self.hidden_dim = hidden_dim
        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.n_critics = n_critics
        self.share_features_extractor = share_features_extractor
        self.augment = bool(augment)
        self.aug_pad = aug_pad
        self.aug_method = aug_method
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
            self.net_arch,
            self.activation_fn,
            self.n_critics,
        )
        networks.apply(weight_init)
        self.features_extractor = networks["encoder"]
        self.actor_features_extractor: BaseFeaturesExtractor | None = None
        if not self.share_features_extractor:
            self.actor_features_extractor = self.make_features_extractor()
            self.actor_features_extractor.apply(weight_init)
        self.actor = networks["actor"]
        self.value_net = networks["value_net"]
        self.critic = networks["critic"]
        self.critic_target = copy.deepcopy(self.critic)
        self.aug = RandomShiftsAug(self.aug_pad, self.aug_method)

        # Four Adams as in the reference (encoder, actor, critic, value net); the encoder has none without parameters.
        lr = lr_schedule(1)
        encoder_params = list(self.features_extractor.parameters())
        self.encoder_optimizer = self.make_optimizer(encoder_params, lr) if encoder_params else None
        actor_parameters = self.actor.parameters()
        if self.actor_features_extractor is not None:
            actor_parameters = itertools.chain(actor_parameters, self.actor_features_extractor.parameters())
        self.actor.optimizer = self.make_optimizer(actor_parameters, lr)
        self.critic.optimizer = self.make_optimizer(self.critic.parameters(), lr)
        self.value_net.optimizer = self.make_optimizer(self.value_net.parameters(), lr)
        # The reference never switches the target critic to eval mode (dropout stays active in drm_mw targets).
        self.critic_target.train(True)
        self.critic_target.requires_grad_(False)

    def make_optimizer(self, params: Any, lr: float) -> th.optim.Optimizer:
        """``optimizer_class(params, lr, **optimizer_kwargs)``; Adam's step fused (one kernel per tensor, the same
        update to fp32 rounding) unless ``optimizer_kwargs`` choose ``fused`` or ``foreach``."""
        kwargs = dict(self.optimizer_kwargs)
        if self.optimizer_class is th.optim.Adam and not {"fused", "foreach"} & set(kwargs):
            kwargs["fused"] = True
        return self.optimizer_class(params, lr=lr, **kwargs)

    @property
    def optimizers(self) -> list[th.optim.Optimizer]:
        """The optimizers whose learning rate follows the schedule (encoder first when it has parameters)."""
        nets = (self.actor, self.critic, self.value_net)  # no value net in DrQ-v2 (variant="drqv2")
        optimizers = [net.optimizer for net in nets if net is not None]
        return ([self.encoder_optimizer] if self.encoder_optimizer is not None else []) + optimizers

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                lr_schedule=self._dummy_schedule,  # not needed to load the policy alone
                variant=self.variant,
                feature_dim=self.feature_dim,
                hidden_dim=self.hidden_dim,
                net_arch=self.net_arch,
                activation_fn=self.activation_fn,
                n_critics=self.n_critics,
                share_features_extractor=self.share_features_extractor,
                augment=self.augment,
                aug_pad=self.aug_pad,
                aug_method=self.aug_method,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
            )
        )
        return data

    def _preprocess(self, observations: PyTorchObs, augment: bool) -> PyTorchObs:
        """SB3's ``preprocess_obs`` (images / 255), then the random shift of every image (key) when ``augment``."""
        if augment and self.augment and self.normalize_images and is_image_space(self.observation_space):
            # The reference's order: shift the raw 0-255 batch, then scale (SB3's preprocess_obs: float / 255).
            return scale_images(self.aug(observations))
        obs = preprocess_obs(observations, self.observation_space, normalize_images=self.normalize_images)
        if not (augment and self.augment):
            return obs
        if isinstance(obs, dict):
            return {key: self.aug(value) if key in self.image_keys else value for key, value in obs.items()}
        return self.aug(obs)

    def encode(self, observations: PyTorchObs, augment: bool = False) -> th.Tensor:
        """
        Preprocess (SB3: images / 255), optionally random-shift, and encode observations with the critic's encoder.

        :param observations: a batch of raw observations
        :param augment: apply the random shift (only if the policy has augmentation on)
        :return: features (``repr_dim`` per sample)
        """
        return self.features_extractor(self._preprocess(observations, augment))

    def encode_both(self, observations: PyTorchObs, augment: bool = False) -> tuple[th.Tensor, th.Tensor]:
        """
        Features for the critic and for the actor of one (shifted) batch: with a shared encoder the actor's are the
        critic's, detached (DrM); otherwise the actor's own encoder's, with gradients.

        :param observations: a batch of raw observations
        :param augment: apply the random shift (the same shift for both encoders)
        :return: ``(critic_features, actor_features)``
        """
        obs = self._preprocess(observations, augment)
        features = self.features_extractor(obs)
        if self.actor_features_extractor is None:
            return features, features.detach()
        return features, self.actor_features_extractor(obs)

    def forward(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(observation, deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        """Actor mean (``dist.mean``) when deterministic, else ``mean + exploration_std * N(0, 1)`` clamped (acting)."""
        encoder = self.features_extractor if self.actor_features_extractor is None else self.actor_features_extractor
        mean = self.actor(encoder(self._preprocess(observation, augment=False)))
        if deterministic:
            return mean
        return sample_action(mean, self.exploration_std, clip=None)

    def set_training_mode(self, mode: bool) -> None:
        """
        Put the policy in training or evaluation mode, as SB3 does: training mode (BatchNorm batch statistics,
        Dropout on) only during gradient steps, evaluation mode while collecting and predicting. The target critic
        always stays in training mode, as in the reference (it never calls ``eval()`` on it, so ``drm_mw``'s dropout
        is active in the TD target). A user's BatchNorm or Dropout can only sit in the features extractor (the heads
        are DrM's), and the extractor has no target copy: the target critic reads the online encoder's features, so
        TD3's copy of BatchNorm statistics into the targets has nothing to do here.

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
                f"CnnPolicy needs image observations (uint8 Box in [0, 255], channel-first or -last; float (C, H, W) "
                f"with policy_kwargs=dict(normalize_images=False)), got {observation_space}; use MlpPolicy for flat "
                "features, PiegPolicy for spatial PVR features or MultiInputPolicy for Dict observations"
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


class MultiInputPolicy(DrMPolicy):
    """
    DrM policy for ``Dict`` observations, e.g. pixels or PVR features plus proprioception: the DrQ-v2 encoder on
    every image key (random-shifted during updates), the other keys flattened, all concatenated
    (:class:`~pvrw.drm.extractors.DrMCombinedExtractor`), trained by the critic loss. See :class:`DrMPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *args: Any,
        features_extractor_class: type[BaseFeaturesExtractor] = DrMCombinedExtractor,
        **kwargs: Any,
    ):
        if not isinstance(observation_space, spaces.Dict):
            raise ValueError(
                f"MultiInputPolicy is for Dict observations, got {observation_space}; use CnnPolicy or MlpPolicy"
            )
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            *args,
            features_extractor_class=features_extractor_class,
            **kwargs,
        )
