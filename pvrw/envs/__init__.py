"""Pixel environments: Meta-World 3 set up as in the DrM study, and any Gymnasium env rendered to frames.

Public names are imported lazily from their modules (see ``_LAZY_EXPORTS``): ``import pvrw.envs`` does not import
MuJoCo or Meta-World.
"""

from __future__ import annotations

from pvrw._lazy import lazy_getattr

_LAZY_EXPORTS = {
    # the factory (make_env, make_vec_env) and the Meta-World task
    "make_env": "pvrw.envs.metaworld",
    "make_vec_env": "pvrw.envs.metaworld",
    "scripted_expert": "pvrw.envs.metaworld",
    "parse_metaworld_id": "pvrw.envs.metaworld",
    "benchmark_tasks": "pvrw.envs.metaworld",
    "MetaWorldTask": "pvrw.envs.metaworld",
    # pixel, action-repeat and frame-stack wrappers; rendering
    "ActionRepeat": "pvrw.envs.wrappers",
    "PixelObservation": "pvrw.envs.wrappers",
    "FrameStack": "pvrw.envs.wrappers",
    "RendererUnavailableError": "pvrw.envs.wrappers",
}

__all__ = sorted(_LAZY_EXPORTS)

__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
