"""pvrw: pretrained visual representation wrappers for visual reinforcement learning.

Heavy submodules (torch, mujoco, stable-baselines3) are imported on first use of a public name, so that
``import pvrw`` and ``pvrw --help`` stay fast. The MuJoCo GL backend is chosen here, before anything imports mujoco.
"""

from __future__ import annotations

from pvrw._gl import configure_gl_backend
from pvrw._lazy import lazy_getattr

configure_gl_backend()

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    "make_env": "pvrw.envs",
    "make_vec_env": "pvrw.envs",
    "scripted_expert": "pvrw.envs",
    "PVRObservation": "pvrw.pvr_wrappers",
    "VecPVRObservation": "pvrw.pvr_wrappers",
    "VectorPVRObservation": "pvrw.pvr_wrappers",
    "create_backbone": "pvrw.backbones",
    "list_backbones": "pvrw.backbones",
    "register_backbone": "pvrw.backbones",
    "RandomWeightsWarning": "pvrw.backbones",
    "FeatureStore": "pvrw.feature_cache",
    "DrM": "pvrw.drm",
    "trainable_parameter_counts": "pvrw.drm",
    "DrMReplayBuffer": "pvrw.drm.buffers",
}

__all__ = ["__version__", *sorted(_LAZY_EXPORTS)]

__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
