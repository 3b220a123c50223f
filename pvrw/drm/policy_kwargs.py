"""Stable-Baselines3's habits on DrM: ``policy_kwargs`` as SB3 spells them, and one-line refusals of what DrM cannot do.

``net_arch`` follows SB3's off-policy meaning: a list gives the hidden layers of every head (actor, critic and DrM's
value net), a dict gives them per head (``pi`` actor, ``qf`` critic, ``vf`` value net; a missing ``vf`` takes
``qf``, the value net being a critic-like head). ``None`` keeps the reference: two layers of ``hidden_dim`` (1024).
The trunk in front of every head (``Linear LayerNorm Tanh`` to ``feature_dim``, 50) is DrM's and is kept.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first

from pvrw.drm.buffers import infer_frame_stack

NET_ARCH_KEYS = ("pi", "qf", "vf")
NetArch = Sequence[int] | dict[str, Sequence[int]] | None

#: SB3 policy keywords that DrM's policies cannot honour, and why.
REFUSED_POLICY_KWARGS = {
    **dict.fromkeys(
        ("use_sde", "log_std_init", "full_std", "use_expln", "clip_mean", "sde_net_arch"),
        "DrM's actor is deterministic; its exploration noise is DrM's scheduled / dormant-ratio std "
        "(DrM(stddev_type=..., stddev_schedule=...)), not a learned or state-dependent one",
    ),
    "squash_output": "DrM's actor always ends in tanh (actions in [-1, 1], rescaled to the action space)",
    "ortho_init": "DrM initialises every Linear and Conv2d orthogonally (DrQ-v2's weight_init), always",
}

#: SB3 algorithm keywords (TD3, SAC, DDPG) that DrM cannot honour, and why.
REFUSED_ALGORITHM_KWARGS = {
    "policy_delay": "DrM updates the actor after the critic at every gradient step, as DrQ-v2 (update every "
    "train_freq steps instead)",
    **dict.fromkeys(
        ("target_policy_noise", "target_noise_clip"),
        "DrM's target-action noise is its exploration std (dormant ratio / stddev_schedule), clipped at stddev_clip",
    ),
    **dict.fromkeys(
        ("ent_coef", "target_entropy", "use_sde", "sde_sample_freq", "use_sde_at_warmup"),
        "DrM's actor is deterministic with scheduled Gaussian noise: no entropy term, no gSDE "
        "(see stddev_type / stddev_schedule)",
    ),
    "target_update_interval": "DrM's target critic follows the critic by Polyak averaging (tau) at every gradient step",
}


def refuse_algorithm_kwargs(algorithm: str, kwargs: dict[str, Any]) -> None:
    """
    Raise a one-line ``TypeError`` for keyword arguments an SB3 algorithm takes and DrM does not.

    :param algorithm: the algorithm's class name
    :param kwargs: the unexpected keyword arguments (nothing happens when empty)
    """
    for name in kwargs:
        reason = REFUSED_ALGORITHM_KWARGS.get(name)
        if reason is not None:
            raise TypeError(f"{algorithm} does not take {name}= ({reason}).")
    if kwargs:
        raise TypeError(f"{algorithm}.__init__() got unexpected keyword arguments {sorted(kwargs)}.")


def accepted_policy_kwargs(policy_class: type) -> list[str]:
    """The keyword arguments a DrM policy class accepts in ``policy_kwargs`` (its ``__init__`` and its parents')."""
    names: dict[str, None] = {}
    for klass in policy_class.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass.__module__.startswith("stable_baselines3"):
            continue
        for name, parameter in inspect.signature(init).parameters.items():
            if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                names[name] = None
    return [name for name in names if name not in ("self", "observation_space", "action_space", "lr_schedule")]


def check_policy_kwargs(policy_class: type, policy_kwargs: dict[str, Any]) -> None:
    """
    Refuse ``policy_kwargs`` keys the policy does not take, in one line that lists the accepted ones.

    :param policy_class: the DrM policy class
    :param policy_kwargs: the keyword arguments passed to it
    """
    for name in policy_kwargs:
        reason = REFUSED_POLICY_KWARGS.get(name)
        if reason is not None:
            raise TypeError(f"{policy_class.__name__} does not take policy_kwargs {name!r}: {reason}.")
    accepted = accepted_policy_kwargs(policy_class)
    unknown = sorted(set(policy_kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"{policy_class.__name__} got unknown policy_kwargs {unknown}; accepted: {', '.join(sorted(accepted))}."
        )


def _widths(value: Any, where: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{where} must be a list of layer widths such as [256, 256], got {value!r}")
    if not all(isinstance(width, (int, np.integer)) and not isinstance(width, bool) and width > 0 for width in value):
        raise ValueError(f"{where} must hold positive ints (layer widths), got {list(value)!r}")
    return [int(width) for width in value]


def resolve_net_arch(net_arch: NetArch) -> dict[str, list[int] | None]:
    """
    SB3's ``net_arch`` for DrM's three heads.

    :param net_arch: ``None`` (reference: two layers of ``hidden_dim``), a list of hidden widths for every head, or a
        dict with ``pi`` (actor), ``qf`` (critic) and optionally ``vf`` (value net; default: ``qf``)
    :return: ``{"pi": ..., "qf": ..., "vf": ...}``, each a list of widths or None for the reference's
    """
    if net_arch is None:
        return dict.fromkeys(NET_ARCH_KEYS)
    if isinstance(net_arch, dict):
        unknown = sorted(set(net_arch) - set(NET_ARCH_KEYS))
        if unknown:
            raise ValueError(
                f"net_arch keys {unknown} are not DrM heads; use pi (actor), qf (critic) and vf (value net, "
                "default: qf), e.g. net_arch=dict(pi=[256, 256], qf=[512, 512])"
            )
        heads = {
            key: _widths(net_arch[key], f"net_arch[{key!r}]") if key in net_arch else None for key in NET_ARCH_KEYS
        }
        if heads["vf"] is None:
            heads["vf"] = heads["qf"]
        return heads
    widths = _widths(net_arch, "net_arch")
    return dict.fromkeys(NET_ARCH_KEYS, widths)


def image_keys(observation_space: spaces.Space, normalize_images: bool) -> list[str | None]:
    """
    The observations DrM treats as images (random shift; replay frames of 3 channels): ``[None]`` for an image
    ``Box``, the image keys of a ``Dict``. An image is a channel-first ``(C, H, W)`` ``Box``: uint8 in [0, 255], or
    any dtype with ``normalize_images=False`` (SB3's image-like float inputs).

    :param observation_space: the (transposed) observation space
    :param normalize_images: the policy's ``normalize_images``
    :return: the keys
    """
    if isinstance(observation_space, spaces.Dict):
        return [key for key, space in observation_space.spaces.items() if _is_image(space, normalize_images)]
    return [None] if _is_image(observation_space, normalize_images) else []


def _is_image(space: spaces.Space, normalize_images: bool) -> bool:
    return is_image_space(space, normalized_image=not normalize_images)


def observation_frame_stack(space: spaces.Box, normalize_images: bool = True) -> int:
    """
    Frames per observation for :class:`~pvrw.drm.buffers.DrMReplayBuffer`: as
    :func:`~pvrw.drm.buffers.infer_frame_stack`, except that an image-like float ``(3k, H, W)`` input used with
    ``normalize_images=False`` counts as ``k`` RGB frames (not ``3k`` rows of features).

    :param space: a ``Box`` observation space
    :param normalize_images: the policy's ``normalize_images``
    :return: the number of frames
    """
    shape = space.shape
    if space.dtype != np.uint8 and len(shape) == 3 and _is_image(space, normalize_images):
        return shape[0] // 3 if is_image_space_channels_first(space) and shape[0] % 3 == 0 else 1
    return infer_frame_stack(space)
