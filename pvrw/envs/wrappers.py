"""Generic Gymnasium wrappers behind :func:`pvrw.make_env`: action repeat with success bookkeeping, rendered frames as
channel-first observations, channel-axis frame stacking, and safe OpenGL handling for several MuJoCo envs in one
process.

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
from collections import deque
from typing import Any, SupportsFloat

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from pvrw._gl import gl_install_hint

STACK_INITS = ("zeros", "repeat")
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


def success_flag(info: dict[str, Any]) -> bool:
    """The per-step success flag of an env's ``info`` (Meta-World ``success``, or a generic ``is_success``)."""
    return bool(info.get("success", info.get("is_success", False)))


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ``ValueError`` that lists them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value


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


def make_gym_pixel_base(env_id: str, resolution: int, camera: str | None, render_quality: str, seed: int | None,
                        env_kwargs: dict[str, Any]) -> gym.Env:
    """``gym.make(env_id, render_mode="rgb_array")``, at ``resolution`` where the env takes width/height (MuJoCo),
    with ``render_quality`` applied to MuJoCo models and its RNG seeded without rendering."""
    kwargs = dict(env_kwargs, render_mode="rgb_array")
    if camera is not None:
        kwargs["camera_name"] = camera
    try:
        try:  # MuJoCo envs render at the requested size directly
            env = gym.make(env_id, width=resolution, height=resolution, **kwargs)
        except TypeError:
            env = gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise ValueError(
            f"{env_id!r} is neither a Meta-World id ('metaworld/<task>-v3') nor a registered Gymnasium id: {exc}"
        ) from exc
    except TypeError as exc:
        raise ValueError(
            f"Could not make {env_id!r} with {sorted(kwargs)} (camera= needs a MuJoCo env): {exc}") from exc
    model = getattr(env.unwrapped, "model", None)
    if isinstance(model, mujoco.MjModel):
        apply_render_quality(model, render_quality)
    if seed is not None:
        env.reset(seed=seed)  # seeds the env's RNG without rendering; the next reset continues from it
        env.action_space.seed(seed)
    return env


class ActionRepeat(gym.Wrapper):
    """Repeat each action ``repeat`` times, sum the rewards, and report success as the study counts it.

    ``info["success"]`` (and its SB3 alias ``info["is_success"]``): the task succeeded at any simulator step so far
    this episode. ``info["success_now"]``: the success flag of the last simulator step of this agent step. The
    repeat stops early when the inner env terminates or truncates. Other info keys come from the last inner step.

    :param env: env whose ``info`` may carry a per-step ``success`` (or ``is_success``) flag.
    :param repeat: simulator steps per agent step (DrM uses 2).
    """

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        if int(repeat) != repeat or repeat < 1:
            raise ValueError(f"action_repeat must be an integer >= 1, got {repeat!r}.")
        self.repeat = int(repeat)
        self._episode_success = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._episode_success = False
        return self.env.reset(seed=seed, options=options)

    def step(self, action) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        total_reward = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            success_now = success_flag(info)
            self._episode_success |= success_now
            if terminated or truncated:
                break
        info = dict(info)
        info["success_now"] = success_now
        info["success"] = self._episode_success
        info["is_success"] = self._episode_success
        return obs, total_reward, terminated, truncated, info


class PixelObservation(gym.ObservationWrapper):
    """Replace the observation by the rendered frame, resized to ``resolution`` and channel-first ``(3, H, W)`` uint8.

    The env must have ``render_mode="rgb_array"``. MuJoCo envs render with their own GL context current, and their GL
    resources are released safely on close and garbage collection (see the module docstring).

    :param env: env to render.
    :param resolution: output height and width in pixels.
    """

    def __init__(self, env: gym.Env, resolution: int):
        super().__init__(env)
        self.resolution = int(resolution)
        self.observation_space = spaces.Box(0, 255, (3, self.resolution, self.resolution), np.uint8)
        self._gl_finalizer = install_gl_finalizer(env)

    def observation(self, observation: Any) -> np.ndarray:
        frame = resize_frame(render_frame(self.env), self.resolution, self.resolution)
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def close(self) -> None:
        if self._gl_finalizer is not None:
            self._gl_finalizer()
        super().close()


class FrameStack(gym.Wrapper):
    """Stack the last ``num_stack`` channel-first observations on the channel axis, oldest first.

    :param env: env with a ``Box`` observation space of shape ``(C, H, W)``.
    :param num_stack: number of frames in a stack.
    :param stack_init: how the stack is filled at reset: ``"zeros"`` (older slots are black, as DrM's Meta-World
        wrapper does) or ``"repeat"`` (the first frame is repeated, as DrM's / DrQ-v2's DMC wrapper does).
    """

    def __init__(self, env: gym.Env, num_stack: int, stack_init: str = "zeros"):
        super().__init__(env)
        if int(num_stack) != num_stack or num_stack < 1:
            raise ValueError(f"frame_stack must be an integer >= 1, got {num_stack!r}.")
        if stack_init not in STACK_INITS:
            raise ValueError(f"stack_init must be one of {STACK_INITS}, got {stack_init!r}.")
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 3:
            raise ValueError(f"FrameStack needs a (C, H, W) Box observation space, got {space}.")
        self.num_stack = int(num_stack)
        self.stack_init = stack_init
        self._frames: deque[np.ndarray] = deque(maxlen=self.num_stack)
        reps = (self.num_stack, 1, 1)
        self.observation_space = spaces.Box(np.tile(space.low, reps), np.tile(space.high, reps), dtype=space.dtype)

    def _stacked(self) -> np.ndarray:
        return np.concatenate(list(self._frames), axis=0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        fill = np.zeros_like(obs) if self.stack_init == "zeros" else obs
        self._frames.extend([fill] * (self.num_stack - 1) + [obs])
        return self._stacked(), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(obs)
        return self._stacked(), reward, terminated, truncated, info
