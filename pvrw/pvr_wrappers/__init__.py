"""Frozen pretrained visual representations as Gymnasium wrappers: PVRObservation and its vector-env variants.

The environment factory now lives in :mod:`pvrw.envs` and the backbone registry in :mod:`pvrw.backbones`; their
names are re-exported here, so code written for earlier versions keeps working. Public names are imported lazily
from their modules (see ``_LAZY_EXPORTS``) so that using one part does not pay for importing the others.
"""

from __future__ import annotations

from pvrw._lazy import lazy_getattr

_LAZY_EXPORTS = {
    # observation wrappers (wrappers.py)
    "PVRObservation": "pvrw.pvr_wrappers.wrappers",
    "VecPVRObservation": "pvrw.pvr_wrappers.wrappers",
    "VectorPVRObservation": "pvrw.pvr_wrappers.wrappers",
    # re-exported: Meta-World / Gymnasium pixel environments (pvrw.envs)
    "make_env": "pvrw.envs",
    "make_vec_env": "pvrw.envs",
    "scripted_expert": "pvrw.envs",
    # re-exported: backbone registry (pvrw.backbones)
    "BackboneCfg": "pvrw.backbones",
    "register_backbone": "pvrw.backbones",
    "create_backbone": "pvrw.backbones",
    "list_backbones": "pvrw.backbones",
    "get_backbone_cfg": "pvrw.backbones",
    "FrozenBackbone": "pvrw.backbones",
    "RandomWeightsWarning": "pvrw.backbones",
    "WeightsNotFoundError": "pvrw.backbones",
    "WeightsFormatError": "pvrw.backbones",
}

__all__ = sorted(_LAZY_EXPORTS)

__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
