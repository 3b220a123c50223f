"""Frozen pretrained visual backbones: a timm-style registry, the built-in entries, custom timm/torch entries and
weight finding with strict loading.

Public names are imported lazily from their modules (see ``_LAZY_EXPORTS``).
"""

from __future__ import annotations

from pvrw._lazy import lazy_getattr

_LAZY_EXPORTS = {
    # registry (registry.py)
    "BackboneCfg": "pvrw.backbones.registry",
    "register_backbone": "pvrw.backbones.registry",
    "create_backbone": "pvrw.backbones.registry",
    "list_backbones": "pvrw.backbones.registry",
    "get_backbone_cfg": "pvrw.backbones.registry",
    "FrozenBackbone": "pvrw.backbones.registry",
    "UnknownBackboneError": "pvrw.backbones.registry",
    "RandomWeightsWarning": "pvrw.backbones.registry",
    # weights (weights.py)
    "WeightsNotFoundError": "pvrw.backbones.weights",
    "WeightsFormatError": "pvrw.backbones.weights",
}

__all__ = sorted(_LAZY_EXPORTS)

__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
