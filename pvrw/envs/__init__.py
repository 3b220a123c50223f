"""Pixel environments: Meta-World 3 set up as in the DrM study, and any Gymnasium env rendered to frames.

``factory.py`` (``make_env``, ``make_vec_env``), ``metaworld.py`` (the Meta-World task: camera, seeding, goals; its
scripted expert), ``wrappers.py`` (action repeat, pixel observation, frame stack), ``rendering.py`` (one OpenGL
context per MuJoCo env, render quality).

Public names are imported lazily from their modules (see ``_LAZY_EXPORTS``): ``import pvrw.envs`` does not import
MuJoCo or Meta-World.
"""

from __future__ import annotations

from pvrw._lazy import lazy_getattr

_LAZY_EXPORTS = {
    # the factory (factory.py)
    "make_env": "pvrw.envs.factory",
    "make_vec_env": "pvrw.envs.factory",
    # Meta-World (metaworld.py)
    "MetaWorldTask": "pvrw.envs.metaworld",
    "benchmark_tasks": "pvrw.envs.metaworld",
    "parse_metaworld_id": "pvrw.envs.metaworld",
    "scripted_expert": "pvrw.envs.metaworld",
    # pixel, action-repeat and frame-stack wrappers (wrappers.py); rendering (rendering.py)
    "ActionRepeat": "pvrw.envs.wrappers",
    "PixelObservation": "pvrw.envs.wrappers",
    "FrameStack": "pvrw.envs.wrappers",
    "RendererUnavailableError": "pvrw.envs.rendering",
}

__all__ = sorted(_LAZY_EXPORTS)

__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
