"""Feature extractor for ``Dict`` observations (:class:`~pvrw.drm.policies.MultiInputPolicy`)."""

from __future__ import annotations

import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from pvrw.drm.networks import DrQEncoder


class DrMCombinedExtractor(BaseFeaturesExtractor):
    """
    SB3's ``CombinedExtractor`` with DrM's image encoder: the DrQ-v2 encoder on every image key, ``Flatten`` on the
    others (proprioception, PVR features), the results concatenated in key order.

    :param observation_space: a ``Dict`` of ``Box`` spaces (images channel-first, as SB3 transposes them)
    :param image_features_dim: ``features_dim`` of each DrQ-v2 encoder (None: its flat conv output, as DrM)
    :param normalized_image: images are already floats in [0, 1] (``normalize_images=False``): any ``(C, H, W)`` Box
        counts as an image
    """

    def __init__(
        self, observation_space: spaces.Dict, image_features_dim: int | None = None, normalized_image: bool = False
    ):
        extractors: dict[str, nn.Module] = {}
        total = 0
        for key, subspace in observation_space.spaces.items():
            if is_image_space(subspace, normalized_image=normalized_image):
                encoder = DrQEncoder(subspace, features_dim=image_features_dim)  # type: ignore[arg-type]
                extractors[key], dim = encoder, encoder.features_dim
            else:
                extractors[key], dim = nn.Flatten(), get_flattened_obs_dim(subspace)
            total += dim
        super().__init__(observation_space, features_dim=total)
        self.extractors = nn.ModuleDict(extractors)

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        return th.cat([extractor(observations[key]) for key, extractor in self.extractors.items()], dim=1)
