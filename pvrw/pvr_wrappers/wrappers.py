"""Gymnasium / Stable-Baselines3 wrappers that turn RGB frames into frozen backbone features.

* :class:`PVRObservation`: a ``gymnasium.ObservationWrapper`` for one env;
* :class:`VecPVRObservation`: an SB3 ``VecEnvWrapper`` (what SB3 algorithms train on) that embeds the new frames of
  all sub-envs, terminal observations included, in ONE batched backbone call per step;
* :class:`VectorPVRObservation`: the same for a Gymnasium ``VectorEnv`` (e.g. ``make_vec_env``).

Frames come from the observation (uint8, HWC or CHW, single ``(3,H,W)`` or frame-stacked on the channel axis
``(3k,H,W)`` as ``make_env`` produces, or ``(k,3,H,W)``) or from ``env.render()`` (``source="render"``). The output
observation is ``float32 (k, *backbone.output_shape)``. A frame already embedded in the previous observation of the
same env is never embedded again (the stack shift is detected; identical frames, such as the repeated first frame of
a reset stack, are embedded once), so a stack of 3 costs one backbone pass per step.

``augment=True`` applies a random shift (DrQ: replicate-pad 4, random crop, the same shift for all frames of one
observation) before the backbone. It is off by default for PVRs (the study found it hurt), and with it on every
frame is re-embedded at every step: no reuse and no cache.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from pvrw.backbones.registry import FrozenBackbone, create_backbone, get_backbone_cfg
from pvrw.pvr_wrappers.frames import FrameLayout, StackEmbedder, random_shift, rgb_layout

__all__ = ["FrameLayout", "PVRObservation", "VecPVRObservation", "VectorPVRObservation", "random_shift", "rgb_layout"]


def resolve_backbone(backbone: Any, frame_size: tuple[int, int] | None, weights: Any = None,
                     resolution: int | None = None, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, cache: Any = None, **options: Any) -> Any:
    """A backbone name or object -> the object the wrappers call (wrapped in ``CachedBackbone`` if ``cache``)."""
    if isinstance(backbone, str):
        if resolution is None:
            if frame_size is None:
                raise ValueError(f"source='render': pass resolution= (the side {backbone} should see); the frame "
                                 "size is not known before the first reset.")
            h, w = frame_size
            cfg = get_backbone_cfg(backbone)
            if h != w:
                raise ValueError(f"frames are {h}x{w}; pass resolution= (the square side {backbone} should see).")
            try:
                resolution = cfg.check_resolution(h)
            except ValueError as err:
                raise ValueError(f"{err} The frames are {h}x{w}: pass resolution= (frames are resized).") from None
        backbone = create_backbone(backbone, weights=weights, resolution=resolution, device=device, dtype=dtype,
                                   **{k: v for k, v in options.items() if v is not None})
    elif weights is not None or resolution is not None or any(v is not None for v in options.values()):
        raise ValueError("weights=, resolution= and backbone options apply to a backbone *name*; this backbone "
                         "object is already built.")
    if not (hasattr(backbone, "embed") and hasattr(backbone, "output_shape")):
        raise TypeError(f"backbone must be a registered name or a FrozenBackbone, got {type(backbone).__name__}.")
    if cache is not None:
        from pvrw.feature_cache import CachedBackbone

        backbone = CachedBackbone(backbone, cache)
    return backbone


def feature_space(backbone: Any, k: int, dtype: Any = np.float32) -> spaces.Box:
    """``Box(-inf, inf, (k, *backbone.output_shape), dtype)`` (contract #3)."""
    return spaces.Box(-np.inf, np.inf, shape=(k, *backbone.output_shape), dtype=dtype)


def _check_augment(augment: bool, cache: Any) -> None:
    if augment and cache is not None:
        raise ValueError("augment=True re-embeds shifted frames every step, so a feature cache cannot be used; "
                         "pass cache=None or augment=False.")


class _PVRWrapperMixin:
    """What the three wrappers share: the embedder, the optional random shift, flushing the cache on close."""

    layout: FrameLayout | None
    backbone: Any

    def _init_features(self, backbone: Any, k: int, n_slots: int, augment: bool, augment_pad: int,
                       output_dtype: Any, batch_size: int) -> spaces.Box:
        """Set up embedding for ``n_slots`` envs; returns the per-env feature space."""
        self.backbone = backbone
        self.augment, self.augment_pad = augment, augment_pad
        self._aug_rng = np.random.default_rng()
        self.output_dtype = np.dtype(output_dtype)
        self.embedder = StackEmbedder(backbone, n_slots, reuse=not augment, batch_size=batch_size)
        return feature_space(backbone, k, self.output_dtype)

    def _init_vectorised(self, space: gym.Space, backbone: Any, n_envs: int, channels_first: bool | None,
                         augment: bool, augment_pad: int, cache: Any, output_dtype: Any, batch_size: int,
                         **kwargs: Any) -> spaces.Box:
        """Setup of the vectorised wrappers (``space``: one sub-env's observations); returns the per-env space."""
        _check_augment(augment, cache)
        self.layout = rgb_layout(space, channels_first, vectorised=True)
        resolved = resolve_backbone(backbone, (self.layout.height, self.layout.width), cache=cache, **kwargs)
        return self._init_features(resolved, self.layout.k, n_envs, augment, augment_pad, output_dtype, batch_size)

    def _shift(self, frames: np.ndarray) -> np.ndarray:
        return random_shift(frames, self.augment_pad, self._aug_rng) if self.augment else frames

    def _frames(self, obs: np.ndarray) -> np.ndarray:
        return self._shift(self.layout.frames(obs))

    def close(self) -> None:
        flush_feature_cache(self.backbone)
        super().close()


class PVRObservation(_PVRWrapperMixin, gym.ObservationWrapper):
    """Replace RGB frames (or stacks of them) by frozen backbone features.

    :param env: a Gymnasium env with uint8 RGB observations, or any env with ``render_mode="rgb_array"`` and
        ``source="render"``.
    :param backbone: a registered name (``"resnet18"``, ``"dinov2"``, ``"dinov2_reg"``, ``"vc1"``...) or a built
        :class:`~pvrw.backbones.registry.FrozenBackbone`.
    :param weights: for a name: ``None`` (offline lookup), a path, or ``"random"`` (smoke tests only).
    :param resolution: side the backbone sees; None uses the frame size (if the architecture allows it).
    :param device: torch device.
    :param dtype: backbone compute dtype (``torch.float32``, ``torch.bfloat16``, ``"float16"``...).
    :param cache: a feature-cache path: the backbone is wrapped in ``pvrw.feature_cache.CachedBackbone``.
    :param source: ``"observation"`` (default) or ``"render"``.
    :param tokens: a ViT readout: ``"cls"``, ``"cls+registers"`` (``dinov2_reg``), ``"mean"``, ``"cls+mean"`` or
        ``"patches"`` (see :mod:`pvrw.backbones.readouts`; ``layers=`` goes through ``backbone_options``).
    :param augment: random shift before the backbone (off by default: it hurt PVRs in the study, and with it on
        nothing is reused or cached).
    :param augment_pad: shift padding in pixels (DrQ: 4).
    :param output_dtype: dtype of the feature observation (float32 default).
    :param channels_first: override the channel-axis guess for 3-D observations.
    :param backbone_options: further entry options (``pos_embed_interp``, ``bn_mode``...).
    """

    def __init__(self, env: gym.Env, backbone: str | FrozenBackbone = "dinov2", weights: Any = None,
                 resolution: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, cache: Any = None, source: str = "observation",
                 tokens: str | None = None, augment: bool = False, augment_pad: int = 4,
                 output_dtype: Any = np.float32, channels_first: bool | None = None, batch_size: int = 64,
                 **backbone_options: Any) -> None:
        super().__init__(env)
        if source not in ("observation", "render"):
            raise ValueError(f"source must be 'observation' or 'render', got {source!r}.")
        _check_augment(augment, cache)
        self.source = source
        if source == "render":
            if env.render_mode != "rgb_array":
                raise ValueError(f"source='render' needs an env made with render_mode='rgb_array' (it has "
                                 f"{env.render_mode!r}).")
            self.layout: FrameLayout | None = None
            frame_size = None  # known only after a reset; needed only when resolution must be inferred
        else:
            self.layout = rgb_layout(env.observation_space, channels_first)
            frame_size = (self.layout.height, self.layout.width)
        resolved = resolve_backbone(backbone, frame_size, weights, resolution, device, dtype, cache, tokens=tokens,
                                    **backbone_options)
        self.k = 1 if self.layout is None else self.layout.k
        self.observation_space = self._init_features(resolved, self.k, 1, augment, augment_pad, output_dtype,
                                                     batch_size)

    def _render_frames(self) -> np.ndarray:
        # render_frame makes this env's own GL context current first: with several MuJoCo envs in one process a
        # plain env.render() draws with whichever context was made current last (wrong or black frames).
        from pvrw.envs.rendering import render_frame  # imports mujoco: only for source="render"

        return np.ascontiguousarray(render_frame(self.env).transpose(2, 0, 1)[None])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._aug_rng = np.random.default_rng(seed)
        return super().reset(seed=seed, options=options)

    def observation(self, observation: Any) -> np.ndarray:
        frames = self._shift(self._render_frames()) if self.layout is None else self._frames(observation)
        return self.embedder([(0, frames)])[0].astype(self.output_dtype, copy=False)


def flush_feature_cache(backbone: Any) -> None:
    """Write the rows a :class:`~pvrw.feature_cache.CachedBackbone` still buffers (a no-op for plain backbones).

    Flushed, not closed: one backbone may serve several envs (a run's train and eval envs).
    """
    flush = getattr(backbone, "flush", None)
    if callable(flush):
        flush()


class VecPVRObservation(_PVRWrapperMixin, VecEnvWrapper):
    """SB3 ``VecEnvWrapper``: frozen features for every sub-env, all new frames in one backbone call per step.

    Use it between SB3's vectorisation and the algorithm: ``SAC("MlpPolicy", VecPVRObservation(DummyVecEnv([...]),
    "dinov2"))``. ``infos[i]["terminal_observation"]`` is embedded too (SB3 stores it as the final next-observation).
    Options are those of :class:`PVRObservation` (``source="render"`` excepted).
    """

    def __init__(self, venv: VecEnv, backbone: str | FrozenBackbone = "dinov2", weights: Any = None,
                 resolution: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, cache: Any = None, tokens: str | None = None,
                 augment: bool = False, augment_pad: int = 4, output_dtype: Any = np.float32,
                 channels_first: bool | None = None, batch_size: int = 64, **backbone_options: Any) -> None:
        space = self._init_vectorised(
            venv.observation_space, backbone, venv.num_envs, channels_first, augment, augment_pad, cache, output_dtype,
            batch_size, weights=weights, resolution=resolution, device=device, dtype=dtype, tokens=tokens,
            **backbone_options)
        super().__init__(venv, observation_space=space)

    def seed(self, seed: int | None = None):
        """Seed the sub-envs (SB3 ``VecEnv.seed``) and, with ``augment=True``, the random shift."""
        if seed is not None:
            self._aug_rng = np.random.default_rng(seed)
        return self.venv.seed(seed)

    def _embed(self, items: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        return [f.astype(self.output_dtype, copy=False) for f in self.embedder(items)]

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        return np.stack(self._embed([(i, self._frames(obs[i])) for i in range(self.num_envs)]))

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        items, terminal = [], []
        for i in range(self.num_envs):
            if dones[i] and infos[i].get("terminal_observation") is not None:
                terminal.append(i)
                items.append((i, self._frames(infos[i]["terminal_observation"])))
            items.append((i, self._frames(obs[i])))
        feats = self._embed(items)
        pos = 0
        out = []
        for i in range(self.num_envs):
            if i in terminal:
                infos[i]["terminal_observation"] = feats[pos]
                pos += 1
            out.append(feats[pos])
            pos += 1
        return np.stack(out), rewards, dones, infos


class VectorPVRObservation(_PVRWrapperMixin, gym.vector.VectorWrapper):
    """Gymnasium ``VectorEnv`` form of :class:`PVRObservation`: one backbone call per step for all sub-envs.

    Works with every autoreset mode (for same-step autoreset, ``infos["final_obs"]`` is embedded in the same call;
    gymnasium's ``VectorObservationWrapper`` refuses that mode, hence a plain ``VectorWrapper``).
    """

    def __init__(self, env: gym.vector.VectorEnv, backbone: str | FrozenBackbone = "dinov2", weights: Any = None,
                 resolution: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, cache: Any = None, tokens: str | None = None,
                 augment: bool = False, augment_pad: int = 4, output_dtype: Any = np.float32,
                 channels_first: bool | None = None, batch_size: int = 64, **backbone_options: Any) -> None:
        super().__init__(env)
        space = self._init_vectorised(
            env.single_observation_space, backbone, env.num_envs, channels_first, augment, augment_pad, cache,
            output_dtype, batch_size, weights=weights, resolution=resolution, device=device, dtype=dtype,
            tokens=tokens, **backbone_options)
        self.single_observation_space = space
        self.observation_space = gym.vector.utils.batch_space(space, env.num_envs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if seed is not None:
            self._aug_rng = np.random.default_rng(seed if isinstance(seed, int) else seed[0])
        obs, infos = self.env.reset(seed=seed, options=options)
        return self.observations(obs), infos

    def observations(self, observations: np.ndarray) -> np.ndarray:
        feats = self.embedder([(i, self._frames(observations[i])) for i in range(self.num_envs)])
        return np.stack(feats).astype(self.output_dtype, copy=False)

    def step(self, actions):
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        if "final_obs" not in infos:  # next-step autoreset (gymnasium's default)
            return self.observations(obs), rewards, terminations, truncations, infos
        # same-step autoreset: final observations and the reset ones, all in one backbone call
        mask = infos.get("_final_obs", np.ones(self.num_envs, bool))
        items, where = [], []
        for i in range(self.num_envs):
            if mask[i]:
                where.append(("final", i))
                items.append((i, self._frames(infos["final_obs"][i])))
            where.append(("obs", i))
            items.append((i, self._frames(obs[i])))
        feats = self.embedder(items)
        final = np.array([None] * self.num_envs, dtype=object)
        out = [None] * self.num_envs
        for (kind, i), feat in zip(where, feats):
            feat = feat.astype(self.output_dtype, copy=False)
            if kind == "final":
                final[i] = feat
            else:
                out[i] = feat
        infos["final_obs"] = final
        return np.stack(out), rewards, terminations, truncations, infos
