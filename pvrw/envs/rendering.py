"""Rendering MuJoCo envs to frames: several envs in one process, each with its own OpenGL context, and the render
quality setting.

Two OpenGL facts shape this module (see the Meta-World reference notes):

* Gymnasium only makes a MuJoCo renderer's GL context current when one env owns several viewers, so with several
  envs in one process an env would render with whichever context was made current last. :func:`render_frame` makes
  the env's own context current before every render.
* Freeing a ``mujoco.MjrContext`` deletes its GL objects *in the current GL context*. When an env is closed or
  garbage-collected while another env's context is current, the other env's framebuffers are deleted and it renders
  black frames for ever. :func:`release_gl_safely` frees the context with its own GL context current, and
  :func:`install_gl_finalizer` arranges that on close and on garbage collection.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import gymnasium as gym
import numpy as np

from pvrw._gl import gl_install_hint, import_mujoco

mujoco = import_mujoco()  # a missing GL library or a bad MUJOCO_GL is one clear GLBackendError
from pvrw.envs._checks import check_choice

RENDER_QUALITIES = ("full", "fast")


class RendererUnavailableError(RuntimeError):
    """MuJoCo's OpenGL renderer could not start (missing system library or unusable backend)."""


def _mujoco_renderer(env: gym.Env) -> Any | None:
    return getattr(env.unwrapped, "mujoco_renderer", None)


def make_gl_context_current(env: gym.Env) -> None:
    """Make the GL context of ``env``'s MuJoCo offscreen viewer current (no-op for non-MuJoCo envs)."""
    renderer = _mujoco_renderer(env)
    viewer = getattr(renderer, "viewer", None) if renderer is not None else None
    if viewer is not None:
        viewer.make_context_current()


def release_gl_safely(renderer: Any) -> None:
    """Free every viewer of a gymnasium ``MujocoRenderer`` with that viewer's own GL context current.

    Safe to call more than once. Afterwards no GL context is current; envs rendered through :func:`render_frame`
    make their own context current before drawing, so they are unaffected.
    """
    for viewer in list(getattr(renderer, "_viewers", {}).values()):
        context = getattr(viewer, "opengl_context", None)
        if context is None or getattr(context, "_context", True) is None:
            continue  # already freed
        viewer.make_context_current()
        viewer.con.free()
        context.free()


def install_gl_finalizer(env: gym.Env) -> weakref.finalize | None:
    """Free ``env``'s MuJoCo GL resources safely when the env is closed or garbage-collected.

    :return: the finalizer (call it to release now), or ``None`` for envs without a MuJoCo renderer.
    """
    base = env.unwrapped
    renderer = _mujoco_renderer(env)
    if renderer is None:
        return None
    finalizer = getattr(base, "_pvrw_gl_finalizer", None)
    if finalizer is None:
        finalizer = weakref.finalize(base, release_gl_safely, renderer)
        base._pvrw_gl_finalizer = finalizer
    return finalizer


def _renderer_error(exc: BaseException) -> RendererUnavailableError:
    backend = os.environ.get("MUJOCO_GL", "<unset>")
    return RendererUnavailableError(
        f"MuJoCo could not start its OpenGL renderer with backend MUJOCO_GL={backend!r} "
        f"({type(exc).__name__}: {exc}). For {backend!r}: {gl_install_hint(backend)}. "
        "pvrw chooses the backend automatically (pvrw._gl.default_gl_backend()); an exported MUJOCO_GL wins."
    )


def render_frame(env: gym.Env) -> np.ndarray:
    """Render ``env`` (``render_mode="rgb_array"``) as an ``(H, W, 3)`` uint8 array, with its own GL context current.

    :raises RendererUnavailableError: when the first render cannot create an OpenGL context.
    """
    renderer = _mujoco_renderer(env)
    first_mujoco_render = renderer is not None and getattr(renderer, "viewer", None) is None
    make_gl_context_current(env)
    try:
        frame = env.render()
    except Exception as exc:
        if first_mujoco_render:
            raise _renderer_error(exc) from exc
        raise
    if frame is None:
        raise ValueError("env.render() returned None: create the env with render_mode='rgb_array'.")
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB frame of shape (H, W, 3), got {frame.shape} from env.render().")
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB frame, got dtype {frame.dtype} from env.render().")
    return frame[..., :3]


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 frame with antialiased bilinear filtering (no-op when already that size)."""
    if frame.shape[:2] == (height, width):
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))



def apply_render_quality(model: mujoco.MjModel, render_quality: str) -> None:
    """Set a model's rendering fields for ``render_quality`` (must run before the first render).

    ``"full"`` keeps MuJoCo's defaults, as the reference rendered. ``"fast"`` turns off the 4096² shadow map (cast
    shadows of arm and table rim disappear and the table is slightly brighter: mean |Δ| ≈ 7.5/255), multisample
    anti-aliasing (edges slightly aliased: mean |Δ| ≈ 1/255) and the reflection pass (no visible change with corner4);
    on a CPU (OSMesa/llvmpipe) that renders about 9x faster. Use the same setting for training and evaluation.
    """
    check_choice("render_quality", render_quality, RENDER_QUALITIES)
    if render_quality == "fast":
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        model.mat_reflectance[:] = 0
