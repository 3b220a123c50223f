"""Trainable parameter counts of DrM agents, for any input (pixels at any resolution, CLS, CLS + registers, PIE-G)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from torch import nn

from pvrw.drm.networks import DrQEncoder, PiegExtractor
from pvrw.drm.policies import DrMPolicy, make_drm_networks
from pvrw.drm.pvr_heads import AttentionPoolExtractor, PatchConvExtractor

ENCODERS: dict[str, type[BaseFeaturesExtractor]] = {
    "CnnPolicy": DrQEncoder,
    "MlpPolicy": FlattenExtractor,
    "PiegPolicy": PiegExtractor,
    "PatchPolicy": PatchConvExtractor,
    "AttentionPoolPolicy": AttentionPoolExtractor,
}


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters() if p.requires_grad)


def _counts(modules: dict[str, nn.Module]) -> dict[str, int]:
    counts = {name: _count(module) for name, module in modules.items()}
    counts["total"] = sum(counts.values())
    return counts


def trainable_parameter_counts(
    observation: spaces.Box | tuple[int, ...] | DrMPolicy | Any,
    action_dim: int = 4,
    policy: str = "CnnPolicy",
    variant: str = "drm",
    feature_dim: int = 50,
    hidden_dim: int = 1024,
    features_extractor_kwargs: dict[str, Any] | None = None,
) -> dict[str, int]:
    """
    Trainable parameters per module (``encoder``, ``actor``, ``critic``, ``value_net``) and their ``total``. The target
    critic is excluded: it is an EMA copy, never optimised.

    Either pass a built model (a :class:`~pvrw.drm.DrM` or a :class:`~pvrw.drm.policies.DrMPolicy`) to count its
    networks, or describe one: the networks are then built on PyTorch's ``meta`` device (no memory, no init) with the
    same code the policy uses.

    Examples at 84x84, frame stack 3, 4 actions: ``trainable_parameter_counts((9, 84, 84))["total"]`` is 10,333,481
    (``variant="drm"``) and 10,341,673 (``variant="drm_mw"``), the reference's numbers.

    :param observation: a model or policy, an observation space, or an observation shape: ``(3k, H, W)`` pixels
        (``CnnPolicy``), ``(k, D)`` or ``(D,)`` flat features (``MlpPolicy``; CLS 768, CLS + 4 registers 3840), or
        ``(k, C, h, w)`` spatial features (``PiegPolicy``)
    :param action_dim: action dimension (Meta-World: 4)
    :param policy: ``"CnnPolicy"``, ``"MlpPolicy"`` or ``"PiegPolicy"``
    :param variant: ``"drm"``, ``"drm_mw"`` or ``"drqv2"`` (no value net)
    :param feature_dim: trunk output size
    :param hidden_dim: hidden size of the heads
    :param features_extractor_kwargs: extra encoder arguments (e.g. ``pieg_dim``)
    :return: ``{"encoder": ..., "actor": ..., "critic": ..., "value_net": ..., "total": ...}``
    """
    built = getattr(observation, "policy", observation)
    if isinstance(built, DrMPolicy):
        modules = dict(
            encoder=built.features_extractor, actor=built.actor, critic=built.critic, value_net=built.value_net
        )
        if built.actor_features_extractor is not None:  # share_features_extractor=False
            modules["actor_encoder"] = built.actor_features_extractor
        return _counts(modules)
    if policy not in ENCODERS:
        raise ValueError(f"Unknown policy {policy!r}, expected one of {sorted(ENCODERS)}")
    if isinstance(observation, spaces.Box):
        observation_space = observation
    else:
        shape = tuple(int(s) for s in observation)
        if policy == "CnnPolicy":
            observation_space = spaces.Box(0, 255, shape, np.uint8)
        else:
            observation_space = spaces.Box(-np.inf, np.inf, shape, np.float32)
    with th.device("meta"):
        networks = make_drm_networks(
            observation_space,
            action_dim,
            ENCODERS[policy],
            features_extractor_kwargs,
            "drm" if variant == "drqv2" else variant,  # DrQ-v2: agents/drm.py's networks without the value net
            feature_dim,
            hidden_dim,
        )
    modules = dict(networks.items())
    if variant == "drqv2":
        modules["value_net"] = None
    return _counts(modules)
