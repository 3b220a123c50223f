"""Frozen pretrained visual backbones: a timm-style registry, the built-in entries (one module per family), custom
timm/torch entries, and weight finding with strict loading.

Importing this package registers the built-ins: each entry module (``resnet``, ``dinov2``, ``vc1``) calls
:func:`~pvrw.backbones.registry.register_backbone` on import, as timm's model modules do, and the registry imports
none of them, so there is no import circle. ``import pvrw`` does not import this package (its names are lazy there).
"""

from __future__ import annotations

from pvrw.backbones import dinov2, resnet, vc1  # noqa: F401  (the built-in entries register themselves)
from pvrw.backbones.config import BackboneCfg
from pvrw.backbones.registry import (
    FrozenBackbone,
    RandomWeightsWarning,
    UnknownBackboneError,
    create_backbone,
    get_backbone_cfg,
    list_backbones,
    register_backbone,
)
from pvrw.backbones.weights import WeightsFormatError, WeightsNotFoundError

__all__ = [
    "BackboneCfg",
    "FrozenBackbone",
    "RandomWeightsWarning",
    "UnknownBackboneError",
    "WeightsFormatError",
    "WeightsNotFoundError",
    "create_backbone",
    "get_backbone_cfg",
    "list_backbones",
    "register_backbone",
]
