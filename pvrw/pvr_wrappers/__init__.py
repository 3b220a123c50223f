"""Frozen pretrained visual representations as Gymnasium wrappers, and Meta-World pixel environments.

Public names are imported lazily from their modules (see ``_LAZY_EXPORTS``) so that using one part does not pay
for importing the others.
"""

from __future__ import annotations

from pvrw._lazy import lazy_getattr

_LAZY_EXPORTS = {
    # Meta-World / Gymnasium pixel environments (metaworld_env.py)
    "make_env": "pvrw.pvr_wrappers.metaworld_env",
    "make_vec_env": "pvrw.pvr_wrappers.metaworld_env",
    "scripted_expert": "pvrw.pvr_wrappers.metaworld_env",
    # backbone registry (registry.py)
    "BackboneCfg": "pvrw.pvr_wrappers.registry",
    "register_backbone": "pvrw.pvr_wrappers.registry",
    "create_backbone": "pvrw.pvr_wrappers.registry",
    "list_backbones": "pvrw.pvr_wrappers.registry",
    "get_backbone_cfg": "pvrw.pvr_wrappers.registry",
    "FrozenBackbone": "pvrw.pvr_wrappers.registry",
    "RandomWeightsWarning": "pvrw.pvr_wrappers.registry",
    "WeightsNotFoundError": "pvrw.pvr_wrappers.weights",
    "WeightsFormatError": "pvrw.pvr_wrappers.weights",
    # observation wrappers (wrappers.py)
    "PVRObservation": "pvrw.pvr_wrappers.wrappers",
    "VecPVRObservation": "pvrw.pvr_wrappers.wrappers",
    "VectorPVRObservation": "pvrw.pvr_wrappers.wrappers",
}

__all__ = sorted(_LAZY_EXPORTS)

__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
