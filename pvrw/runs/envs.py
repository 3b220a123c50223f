"""Environments and policies of a run, built from its :class:`~pvrw.runs.config.RunConfig`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from pvrw.runs.config import ConfigError, RunConfig
from pvrw.runs.evaluation import FrameRecorder

#: seed offset of evaluation envs, so that evaluation goals are not the training goals' sequence
EVAL_SEED_OFFSET = 10_000


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; any other name is checked.

    SB3 silently falls back to the CPU when CUDA is missing; a run that asked for a GPU by name is refused instead,
    so a sweep planned for GPUs does not run for days on CPUs.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} but CUDA is not available here; use --device cpu (or auto)")
    return device


def _metaworld_env(config: RunConfig, seed: int, evaluation: bool) -> gym.Env:
    from pvrw.envs import make_env

    kwargs: dict[str, Any] = {
        "resolution": config.resolution,
        "frame_stack": config.frame_stack,
        "action_repeat": config.action_repeat,
        "seed": seed,
    }
    if evaluation:
        kwargs["goal_mode"] = "fixed"  # the 50 MT1 configurations in a deterministic cycle
    kwargs.update(config.env_kwargs)
    try:
        return make_env(config.env, **kwargs)
    except (ValueError, KeyError, TypeError) as err:  # unknown task, bad env_kwargs value or name
        raise ConfigError(f"env {config.env!r} with env_kwargs {config.env_kwargs}: {err}") from None


def _gymnasium_env(config: RunConfig, seed: int, needs_frames: bool) -> gym.Env:
    kwargs = dict(config.env_kwargs)
    if needs_frames:
        kwargs.setdefault("render_mode", "rgb_array")
    try:
        env = gym.make(config.env, **kwargs)
    except gym.error.Error as err:
        raise _unknown_env(config.env, err) from None
    except TypeError as err:
        raise ConfigError(f"env_kwargs: {err}") from None
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def make_run_env(
    config: RunConfig,
    *,
    evaluation: bool = False,
    record_frames: bool = False,
    backbone: Any = None,
) -> gym.Env:
    """The (single) env of a run: pixels from make_env / gymnasium.make, then PVR features if ``config.pvr``.

    :param evaluation: build the evaluation env: another seed, and (Meta-World) make_env's ``goal_mode="fixed"``.
    :param record_frames: put a :class:`FrameRecorder` under the feature wrapper (for videos).
    :param backbone: a backbone already built by :func:`make_backbone`, shared by the train and eval envs.
    """
    seed = config.seed + (EVAL_SEED_OFFSET if evaluation else 0)
    uses_pvr = config.pvr != "none" and not finetunes(config)  # a fine-tuned backbone runs inside the policy
    if config.is_metaworld:
        env = _metaworld_env(config, seed, evaluation)
    else:
        env = _gymnasium_env(config, seed, needs_frames=uses_pvr or record_frames)
    if record_frames:
        env = FrameRecorder(env)
    if uses_pvr:
        from pvrw.pvr_wrappers import PVRObservation

        pvr_kwargs = dict(config.pvr_kwargs)
        if backbone is not None:  # built with its options (tokens, layers...) by make_backbone
            pvr_kwargs = {k: v for k, v in pvr_kwargs.items() if k not in backbone_options(config)}
        if not _is_pixel_space(env.observation_space):
            pvr_kwargs.setdefault("source", "render")  # a state env: embed its rendered frames
        env = PVRObservation(
            env,
            backbone if backbone is not None else config.pvr,
            **({} if backbone is not None else {"weights": config.weights, "resolution": config.resolution}),
            device=resolve_device(config.device),
            **pvr_kwargs,
        )
    return env


def make_backbone(config: RunConfig) -> Any:
    """The frozen backbone of a PVR run (built once, shared by its envs), or ``None`` for pixels."""
    if config.pvr == "none" or finetunes(config):
        return None
    from pvrw.backbones import WeightsFormatError, create_backbone

    _check_backbone(config)
    try:
        return create_backbone(
            config.pvr, weights=config.weights, resolution=config.resolution, device=resolve_device(config.device),
            **backbone_options(config),
        )
    except WeightsFormatError:  # a damaged or wrong weight file: its own message names the file and the fix
        raise
    except ValueError as err:  # e.g. a resolution the backbone cannot take
        raise ConfigError(f"pvr {config.pvr!r} at resolution {config.resolution}: {err}") from None


#: ``pvr_kwargs`` keys of a run that fine-tunes its backbone inside DrM (:mod:`pvrw.drm.finetune`)
FINETUNE_KEYS = ("finetune", "bn", "backbone_lr")


def finetunes(config: RunConfig) -> bool:
    """Whether the run trains its backbone inside the policy (``pvr_kwargs.finetune`` set): pixels in the replay,
    ``FinetunePolicy``."""
    return config.pvr != "none" and config.pvr_kwargs.get("finetune") is not None


def finetune_policy_kwargs(config: RunConfig) -> dict[str, Any]:
    """The ``policy_kwargs`` of a fine-tuning run: the backbone, its options and mode, its learning rate."""
    kwargs = {k: config.pvr_kwargs[k] for k in ("finetune", "bn") if config.pvr_kwargs.get(k) is not None}
    extractor = dict(backbone=config.pvr, weights=config.weights, resolution=config.resolution,
                     backbone_options=backbone_options(config), **kwargs)
    out: dict[str, Any] = {"features_extractor_kwargs": extractor}
    if config.pvr_kwargs.get("backbone_lr") is not None:
        out["backbone_lr"] = float(config.pvr_kwargs["backbone_lr"])
    return out


def backbone_options(config: RunConfig) -> dict[str, Any]:
    """The ``pvr_kwargs`` that are options of the run's backbone entry (``tokens``, ``layers``, ``bn_mode``...)."""
    from pvrw.backbones import get_backbone_cfg

    options = get_backbone_cfg(config.pvr).options
    return {k: v for k, v in config.pvr_kwargs.items() if k in options}


def _unknown_env(env_id: str, err: Exception) -> ConfigError:
    """The error for a Gymnasium id that does not exist; a bare Meta-World task name gets its ``metaworld/`` id."""
    from pvrw.envs.metaworld import parse_metaworld_id

    try:
        parse_metaworld_id(env_id)
    except ValueError as metaworld:  # "'push-v3' is a Meta-World task: write it as 'metaworld/push-v3'"
        return ConfigError(f"env: {metaworld}")
    return ConfigError(f"env: cannot make {env_id!r}: {err}")


def _check_backbone(config: RunConfig) -> None:
    """The backbone's name, weights path and input side, checked without building it."""
    from pvrw.backbones import get_backbone_cfg

    check_backbone_name(config.pvr)
    if config.weights not in (None, "random") and not Path(config.weights).exists():
        raise ConfigError(f"weights: {config.weights} does not exist; give a weight file or folder, or 'random'")
    try:
        get_backbone_cfg(config.pvr).check_resolution(config.resolution)
    except ValueError as err:
        raise ConfigError(f"resolution: {err}") from None
    try:
        get_backbone_cfg(config.pvr).resolve_options(**backbone_options(config))
    except ValueError as err:
        raise ConfigError(f"pvr_kwargs: {err}") from None
    if finetunes(config):
        from pvrw.drm.finetune import BN_MODES, parse_finetune

        if config.algo != "drm":
            raise ConfigError(f"pvr_kwargs.finetune: fine-tuning runs inside DrM's policy; algo is {config.algo!r}")
        try:
            parse_finetune(config.pvr_kwargs["finetune"])
        except ValueError as err:
            raise ConfigError(f"pvr_kwargs.{err}") from None
        if config.pvr_kwargs.get("bn", "frozen") not in BN_MODES:
            raise ConfigError(f"pvr_kwargs.bn: {config.pvr_kwargs['bn']!r} is not one of {BN_MODES}")


def check_run_setup(config: RunConfig) -> RunConfig:
    """Check what a run needs before anything is created or built: the task id, the rendering backend and image
    side (Meta-World), the backbone, its weights path and input side, and the device.

    :raises ConfigError: naming the key to fix. :raises GLBackendError: MuJoCo cannot render here.
    :return: ``config``
    """
    resolve_device(config.device)
    if config.is_metaworld:
        from pvrw.envs.factory import MAX_RESOLUTION, MIN_RESOLUTION
        from pvrw.envs.metaworld import parse_metaworld_id

        try:
            parse_metaworld_id(config.env)
        except ValueError as err:
            raise ConfigError(f"env: {err}") from None
        if not MIN_RESOLUTION <= config.resolution <= MAX_RESOLUTION:
            raise ConfigError(f"resolution: {config.resolution} px is not supported; use {MIN_RESOLUTION} to "
                              f"{MAX_RESOLUTION} (the study uses 112 and 224)")
    else:
        module, _, env_id = config.env.rpartition(":")  # gym.make's "module:Env-v0" imports module first
        try:
            if module:
                importlib.import_module(module)
            spec = gym.spec(env_id)
        except ModuleNotFoundError as err:
            raise ConfigError(f"env: cannot import {module!r} for {config.env!r}: {err}") from None
        except gym.error.Error as err:
            raise _unknown_env(config.env, err) from None
        if "mujoco" in str(spec.entry_point):
            from pvrw._gl import import_mujoco

            import_mujoco()
    if config.pvr != "none":
        _check_backbone(config)
    return config


def check_backbone_name(pvr: str) -> None:
    """Raise :class:`ConfigError` unless ``pvr`` is ``none`` or a registered backbone."""
    from pvrw.backbones import list_backbones

    known = list(list_backbones())
    if pvr != "none" and pvr not in known:
        raise ConfigError(f"pvr: unknown backbone {pvr!r}; choose 'none' or one of {', '.join(known)}")


def _is_pixel_space(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def default_policy(config: RunConfig, observation_space: gym.Space) -> str:
    """The policy a run uses unless ``config.policy`` names one.

    DrM: ``CnnPolicy`` on pixels, ``PiegPolicy`` on spatial features (ResNet18 PIE-G maps), ``PatchPolicy`` on ViT
    patch maps (``pvr_kwargs.tokens: patches``), ``MlpPolicy`` on flat
    features (CLS tokens). SAC/TD3: ``CnnPolicy`` on pixels, ``MlpPolicy`` on anything else (features flattened).
    """
    if config.policy:
        return config.policy
    if finetunes(config):
        return "FinetunePolicy"
    if _is_pixel_space(observation_space):
        return "CnnPolicy"
    spatial = isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) >= 4
    if config.algo == "drm" and spatial:  # ViT patch maps get the compressing head, ResNet maps PIE-G's
        return "PatchPolicy" if config.pvr_kwargs.get("tokens") == "patches" else "PiegPolicy"
    return "MlpPolicy"
