"""DrM's choice arguments: the reference variants and their defaults, the exploration-std types and the precisions.

Split from :mod:`pvrw.drm.drm` (the SB3 algorithm) only to keep modules short; ``pvrw.drm.drm`` re-imports every name.
"""

from __future__ import annotations

from typing import Any

import torch as th

from pvrw.drm.drqv2 import DRQV2_DEFAULTS, network_variant

#: Hyper-parameters that differ between the two reference variants (``None`` arguments take these).
#: ``drm``: the original agent (``agents/drm.py``) as run before the 2024-05-27 Meta-World rewrite: n = 3, gamma =
#: 0.99, lambda_hat = 0.6 (every task config). ``max_perturb_factor`` has no agent default (``???``); 0.9 is the value
#: of most of the old Meta-World task configs (assembly, stick-pull, sweep-into; coffee-push/disassemble used 0.6).
#: ``drm_mw``: ``agents/drm_mw.py`` + ``cfgs/agent/drm_mw.yaml`` with the values that actually take effect in
#: ``train_mw.py``: n = floor(3 + 7) = 10 and gamma = 0.997 - 0.02 - 0.007 = 0.97, constant (the annealing is dead
#: code), lambda = 0.5, max_perturb_factor = 0.95.
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "drm": dict(n_steps=3, gamma=0.99, target_lambda=0.6, max_perturb_factor=0.9),
    "drm_mw": dict(n_steps=10, gamma=0.97, target_lambda=0.5, max_perturb_factor=0.95),
    "drqv2": DRQV2_DEFAULTS,  # the DrQ-v2 baseline (drqv2.py)
}
STDDEV_TYPES = ("awake", "dormant")
PRECISIONS = ("fp32", "bf16")


def bf16_supported(device: th.device) -> bool:
    """Whether bf16 autocast is fast on ``device``: CUDA with bf16 support, or a CPU with AVX512-bf16 / AMX."""
    if device.type == "cuda":
        return th.cuda.is_bf16_supported()
    return device.type == "cpu" and th.backends.mkldnn.is_available() and th.ops.mkldnn._is_mkldnn_bf16_supported()


def check_options(
    variant: str, precision: str, stddev_type: str, policy_kwargs: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    Check DrM's choice arguments and give the variant's defaults and the policy keywords with the network variant.

    :return: ``(VARIANT_DEFAULTS[variant], policy_kwargs)``, the latter a copy with ``"variant"`` set
    :raises ValueError: an unknown ``variant``, ``precision`` or ``stddev_type``, or ``policy_kwargs['variant']``
        that contradicts ``variant``
    """
    if variant not in VARIANT_DEFAULTS:
        raise ValueError(f"Unknown DrM variant {variant!r}, expected one of {tuple(VARIANT_DEFAULTS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}, expected one of {PRECISIONS}")
    if stddev_type not in STDDEV_TYPES:
        raise ValueError(f"Unknown stddev_type {stddev_type!r}, expected one of {STDDEV_TYPES}")
    policy_kwargs = dict(policy_kwargs or {})
    if policy_kwargs.setdefault("variant", network_variant(variant)) != network_variant(variant):
        raise ValueError(f"policy_kwargs['variant']={policy_kwargs['variant']!r} contradicts variant={variant!r}")
    return VARIANT_DEFAULTS[variant], policy_kwargs
