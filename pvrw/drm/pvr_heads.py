"""Trainable DrM heads on ViT patch-token maps (``tokens="patches"``: stacked ``(k, D, h, w)`` observations).

* :class:`PatchConvExtractor` / :class:`PatchPolicy`: eai-vc's compression of a ViT map (``Conv2d(D, c, 3, pad 1,
  no bias) -> GroupNorm(1, c) -> ReLU``, with ``c = round(2048 / (h*w))`` channels as eai-vc's
  ``create_compression_layer`` picks them), applied to every frame, then the PIE-G trunk of
  :class:`~pvrw.drm.networks.PiegExtractor` (the current frames and their differences, ``Linear -> LayerNorm``).
* :class:`AttentionPoolExtractor` / :class:`AttentionPoolPolicy`: per frame, the patch tokens are projected to
  ``attn_dim`` and pooled by one learned query (multi-head attention), the frames' pooled vectors concatenated and
  layer-normed.

Both are DrM encoders: trained by the critic loss only, the actor reads their detached features, as DrM's own
encoder. Neither augments (the random shift belongs before the backbone, see :mod:`pvrw.drm.finetune`).
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from pvrw.drm.policies import DrMPolicy


def _spatial_shape(observation_space: spaces.Box, what: str) -> tuple[int, int, int, int]:
    shape = tuple(observation_space.shape)
    if len(shape) != 4:
        raise ValueError(f"{what} needs stacked patch maps of shape (k, D, h, w) (a ViT with tokens='patches'), got "
                         f"{shape}; use MlpPolicy for CLS/mean readouts")
    return shape  # type: ignore[return-value]


def compression_channels(h: int, w: int, target: int = 2048) -> int:
    """eai-vc's choice: as many channels as keep about ``target`` values per compressed map (at least 1)."""
    return max(1, int(round(target / (h * w))))


def _pieg_stack(frames: th.Tensor) -> th.Tensor:
    """``(B, k, ...)`` -> PIE-G's ``[f[:, 1:], f[:, 1:] - f[:, :-1]]`` flattened (``f`` itself when ``k == 1``)."""
    if frames.shape[1] == 1:
        return frames.reshape(frames.shape[0], -1)
    current = frames[:, 1:]
    return th.cat([current, current - frames[:, :-1]], dim=1).reshape(frames.shape[0], -1)


class PatchConvExtractor(BaseFeaturesExtractor):
    """eai-vc conv compression of each frame's patch map, then the PIE-G trunk (see the module docstring).

    :param observation_space: ``Box`` of shape ``(k, D, h, w)``
    :param compression_dim: values per compressed frame eai-vc aims at (2048): ``c = round(2048 / (h*w))``
    :param pieg_dim: output of the fully connected layer (1024, PIE-G)
    """

    def __init__(self, observation_space: spaces.Box, compression_dim: int = 2048, pieg_dim: int = 1024):
        k, dim, h, w = _spatial_shape(observation_space, "PatchPolicy")
        super().__init__(observation_space, features_dim=pieg_dim)
        channels = compression_channels(h, w, compression_dim)
        self.compression = nn.Sequential(
            nn.Conv2d(dim, channels, kernel_size=3, padding=1, bias=False), nn.GroupNorm(1, channels), nn.ReLU()
        )
        self.input_dim = (1 if k == 1 else 2 * (k - 1)) * channels * h * w
        self.fc = nn.Linear(self.input_dim, pieg_dim)
        self.ln = nn.LayerNorm(pieg_dim)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        b, k = observations.shape[:2]
        maps = self.compression(observations.flatten(0, 1)).reshape(b, k, -1)
        return self.ln(self.fc(_pieg_stack(maps)))


class AttentionPoolExtractor(BaseFeaturesExtractor):
    """Learned-query attention pooling over each frame's patch tokens (see the module docstring).

    :param observation_space: ``Box`` of shape ``(k, D, h, w)``
    :param attn_dim: width tokens are projected to before pooling (128)
    :param n_heads: attention heads (4)
    """

    def __init__(self, observation_space: spaces.Box, attn_dim: int = 128, n_heads: int = 4):
        k, dim, h, w = _spatial_shape(observation_space, "AttentionPoolPolicy")
        super().__init__(observation_space, features_dim=k * attn_dim)
        self.project = nn.Linear(dim, attn_dim)
        self.query = nn.Parameter(th.zeros(1, 1, attn_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attention = nn.MultiheadAttention(attn_dim, n_heads, batch_first=True)
        self.ln = nn.LayerNorm(k * attn_dim)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        b, k = observations.shape[:2]
        tokens = self.project(observations.flatten(0, 1).flatten(2).transpose(1, 2))  # (b*k, h*w, attn_dim)
        pooled, _ = self.attention(self.query.expand(len(tokens), -1, -1), tokens, tokens, need_weights=False)
        return self.ln(pooled.reshape(b, -1))


class PatchPolicy(DrMPolicy):
    """DrM policy on ViT patch maps with :class:`PatchConvExtractor`. See :class:`~pvrw.drm.policies.DrMPolicy`."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, lr_schedule: Schedule, *args: Any,
                 features_extractor_class: type[BaseFeaturesExtractor] = PatchConvExtractor, **kwargs: Any):
        super().__init__(observation_space, action_space, lr_schedule, *args,
                         features_extractor_class=features_extractor_class, **kwargs)


class AttentionPoolPolicy(DrMPolicy):
    """DrM policy on ViT patch maps with :class:`AttentionPoolExtractor`. See :class:`~pvrw.drm.policies.DrMPolicy`."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, lr_schedule: Schedule, *args: Any,
                 features_extractor_class: type[BaseFeaturesExtractor] = AttentionPoolExtractor, **kwargs: Any):
        super().__init__(observation_space, action_space, lr_schedule, *args,
                         features_extractor_class=features_extractor_class, **kwargs)

