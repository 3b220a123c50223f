"""DrM's three dormant-ratio mechanisms and the measurement itself (reference ``utils.py`` / ``agents/drm*.py``).

Formulas, with beta the actor's dormant ratio and beta_hat the target dormant ratio:

- perturbation factor ``alpha = clip(1 - perturb_rate * beta, min_perturb_factor, max_perturb_factor)``;
- dormant exploration std ``sigma(beta) = 1 / (1 + exp(-dormant_temp * (beta - beta_hat)))``;
- exploitation weight (``agents/drm.py``) ``lambda(beta) = target_lambda / (1 + exp(lambda_temp * (beta - beta_hat)))``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch as th
from torch import nn



def perturb_factor(dormant_ratio: float, perturb_rate: float, min_factor: float, max_factor: float) -> float:
    """
    Shrink factor of a perturbation: ``min(max(min_factor, 1 - perturb_rate * dormant_ratio), max_factor)``.

    :param dormant_ratio: the actor's dormant ratio
    :param perturb_rate: slope (2 in DrM)
    :param min_factor: lower clip (0.2 in DrM)
    :param max_factor: upper clip (per task; 0.95 in ``drm_mw.yaml``)
    :return: alpha, the weight kept from the current parameters
    """
    return min(max(min_factor, 1.0 - perturb_rate * dormant_ratio), max_factor)


def dormant_stddev(dormant_ratio: float, target_dormant_ratio: float, dormant_temp: float) -> float:
    """
    DrM ``dormant_stddev``: ``1 / (1 + exp(-dormant_temp * (dormant_ratio - target_dormant_ratio)))``.

    :param dormant_ratio: the actor's dormant ratio
    :param target_dormant_ratio: beta_hat (0.2 in DrM)
    :param dormant_temp: inverse temperature (10 in DrM)
    :return: the dormant-ratio exploration std
    """
    return 1.0 / (1.0 + math.exp(-dormant_temp * (dormant_ratio - target_dormant_ratio)))


def dormant_lambda(dormant_ratio: float, target_lambda: float, target_dormant_ratio: float, lambda_temp: float) -> float:
    """
    ``agents/drm.py`` ``lambda_``: ``target_lambda / (1 + exp(lambda_temp * (dormant_ratio - target_dormant_ratio)))``.

    :param dormant_ratio: the actor's dormant ratio
    :param target_lambda: lambda_hat (0.6 in the DMC configs)
    :param target_dormant_ratio: beta_hat (0.2)
    :param lambda_temp: inverse temperature (50)
    :return: the weight of the value network in the blended TD target
    """
    return target_lambda / (1.0 + math.exp(lambda_temp * (dormant_ratio - target_dormant_ratio)))


@contextmanager
def linear_outputs(network: nn.Module) -> Iterator[list[tuple[nn.Linear, th.Tensor]]]:
    """
    Capture the output of every ``nn.Linear`` of ``network`` during the forward passes run inside the context (the
    reference's ``LinearOutputHook``s). The tensors are read after the forward, so a Linear followed by an in-place
    ReLU shows its ReLU output, as in the reference.

    :param network: the module to watch
    :return: (layer, output) pairs in call order, filled as forwards run
    """
    captured: list[tuple[nn.Linear, th.Tensor]] = []
    linears = [module for module in network.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(network).__name__} has no nn.Linear layer to measure")
    handles = [
        module.register_forward_hook(lambda m, _i, out: captured.append((m, out))) for module in linears  # type: ignore
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@th.no_grad()
def dormant_ratio_of(outputs: list[tuple[nn.Linear, th.Tensor]], threshold: float = 0.025) -> float:
    """
    The dormant ratio from captured Linear outputs (see :func:`dormant_ratio`), scored in fp32 whatever the
    outputs' dtype (bf16 under autocast).

    :param outputs: (layer, output) pairs from :func:`linear_outputs`
    :param threshold: tau, relative to the layer's mean score
    :return: the dormant ratio in [0, 1]
    """
    total_units, dormant = 0, []
    for module, output in outputs:
        score = output.detach().float().abs().reshape(-1, output.shape[-1]).mean(0)
        dormant.append((score < score.mean() * threshold).sum())
        total_units += module.out_features
    return int(th.stack(dormant).sum().item()) / total_units


@th.no_grad()
def dormant_ratio(network: nn.Module, *inputs: th.Tensor, threshold: float = 0.025) -> float:
    """
    ``utils.cal_dormant_ratio``: the fraction of dormant units over every ``nn.Linear`` of ``network``.

    For a layer with outputs ``h`` (batch x units), ``s_i = mean_batch |h_i|``; unit i is dormant iff
    ``s_i < threshold * mean_j s_j``. The ratio is ``sum(#dormant) / sum(out_features)`` over all Linear layers
    (neuron-weighted, not a mean of per-layer ratios).

    The outputs are captured by forward hooks and scored after the whole forward pass, as in the reference. A Linear
    followed by an in-place ReLU (the reference actor's hidden layers) is therefore scored on its ReLU output, while
    the trunk's Linear (followed by LayerNorm) and the output Linear (followed by ``tanh``) are scored before their
    activation. DrM's update does not call this: it scores the actor forward of its actor update
    (:func:`linear_outputs`), which sees the same weights and batch.

    :param network: the module to measure (DrM: the actor)
    :param inputs: forward inputs (DrM: the encoded, augmented, detached training batch)
    :param threshold: tau, relative to the layer's mean score (0.025 in DrM)
    :return: the dormant ratio in [0, 1]
    """
    with linear_outputs(network) as outputs:
        network(*inputs)
    return dormant_ratio_of(outputs, threshold)


def _post_order(module: nn.Module) -> Iterator[nn.Module]:
    # The order of ``nn.Module.apply``: children first, then the module itself.
    for child in module.children():
        yield from _post_order(child)
    yield module


@th.no_grad()
def perturb(network: nn.Module, optimizer: th.optim.Optimizer | None, factor: float) -> None:
    """
    ``utils.perturb`` (shrink and perturb): every ``nn.Linear`` parameter becomes ``factor * theta + (1 - factor) *
    phi`` with ``phi`` a fresh :func:`~pvrw.drm.networks.weight_init` draw (orthogonal weights, zero biases, so biases
    are just scaled by ``factor``); every other parameter (LayerNorm, convolutions) is left unchanged; the optimizer
    state is reset (``optimizer.state = defaultdict(dict)``), even when ``factor == 1``.

    The reference re-initialises a deep copy of the *whole* network (``deepcopy(net).apply(weight_init)``) and keeps
    only the Linear draws. This draws the same random numbers in the same order, one layer at a time: a fresh
    orthogonal init for each Linear and Conv2d/ConvTranspose2d in ``apply`` order, the convolutions' draws discarded.
    A same-seed run therefore stays on the reference's random stream after a perturbation, without copying the
    network (which matters for the ~411M-parameter PIE-G head at 224 px (k=3)).

    :param network: the module to perturb in place
    :param optimizer: its optimizer, whose state is reset (None: nothing to reset)
    :param factor: alpha, see :func:`perturb_factor`
    """
    # a sub-module marked ``pvrw_no_perturb`` (a fine-tuned pretrained backbone) keeps its weights
    kept = {id(m) for top in network.modules() if getattr(top, "pvrw_no_perturb", False) for m in top.modules()}
    for module in _post_order(network):
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and id(module) not in kept:
            fresh = th.empty_like(module.weight, memory_format=th.contiguous_format)
            nn.init.orthogonal_(fresh, 1.0 if isinstance(module, nn.Linear) else nn.init.calculate_gain("relu"))
            if isinstance(module, nn.Linear):
                module.weight.mul_(factor).add_(fresh, alpha=1.0 - factor)
                if module.bias is not None:
                    module.bias.mul_(factor)  # the fresh bias is zero
    if optimizer is not None:
        optimizer.state = defaultdict(dict)
