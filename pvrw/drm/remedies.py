"""Dormant-ratio remedies beyond the reference, each a :class:`~pvrw.drm.DrM` option that is off by default.

- **Measure more** (``dormant_nets``, ``dormant_per_layer``): DrM's dormant test (``dormant.dormant_ratio``: every
  ``nn.Linear`` output, ``mean_batch |h_i| < threshold * layer mean``, strict) applied to the critic and the value
  net as well as the actor, on the same training batch, optionally per layer.
- **ReDo** (Sokar et al. 2023, "The dormant neuron phenomenon in deep RL"; official code google/dopamine
  ``labs/redo``): every ``redo_interval`` gradient updates, on a separate replay batch, the score of hidden unit i
  is ``s_i = mean |a_i| / (mean_j mean |a_j| + 1e-9)`` with ``a`` the activation the next layer reads (post-ReLU;
  post-tanh for the trunks); units with ``s_i <= redo_tau`` are recycled: incoming weights re-drawn from the
  network's own initialiser (orthogonal), bias 0, outgoing weights 0, and the Adam moments of those entries zeroed
  (the Adam step count is kept, as in the official code). Output layers are never recycled; target networks are not
  touched (the EMA target follows). Unlike the official code, which leaves bias moments alone, every moment of a
  recycled unit is zeroed, and a LayerNorm between the two layers gets that unit's gain and bias reset to 1 and 0.
- **LayerNorm in the heads** (``head_norm``): ``LayerNorm(H)`` after every hidden ``Linear`` of the actor, critic
  and value heads (before the ReLU, where ``agents/drm_mw.py`` puts its Q-head LayerNorms; heads that have one
  already are left as they are). The hidden Linear outputs are then no longer overwritten by the in-place ReLU, so
  the actor's dormant ratio scores them before normalisation and activation (``dormant.py``).
- **Periodic resets** (``reset_interval``; Nikishin et al. 2022, "The primacy bias in deep RL"): every
  ``reset_interval`` agent steps the chosen networks (default: actor, critic, value net; never the encoder, as in
  ``rl_with_resets``' DrQ) are re-initialised, their optimizer state emptied, and the target critic copied from the
  new critic; the replay buffer is kept.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch as th
from torch import nn

from pvrw.drm.networks import weight_init

if TYPE_CHECKING:
    from pvrw.drm.policies import DrMPolicy

#: the networks a remedy may be applied to, as option values, and their attribute on DrM / DrMPolicy
NETWORKS: dict[str, str] = {"actor": "actor", "critic": "critic", "value": "value_net"}


def check_networks(names: Sequence[str], option: str) -> tuple[str, ...]:
    """Validate a ``*_nets`` option: a list of names from :data:`NETWORKS`; return it as a tuple."""
    if isinstance(names, str):
        names = (names,)
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        raise ValueError(f"{option}: unknown network {unknown[0]!r}, expected some of {tuple(NETWORKS)}")
    return tuple(names)


# --- measuring ---------------------------------------------------------------------------------------------------


@th.no_grad()
def dormant_masks(network: nn.Module, *inputs: th.Tensor, threshold: float = 0.025) -> dict[str, th.Tensor]:
    """
    DrM's dormant test per ``nn.Linear`` of ``network`` (the measurement of :func:`pvrw.drm.dormant.dormant_ratio`,
    scored after the whole forward pass, so in-place activations apply as there).

    :param network: the module to measure
    :param inputs: its forward inputs
    :param threshold: tau relative to the layer's mean score (0.025)
    :return: layer name -> boolean mask of its dormant units
    """
    linears = {name: m for name, m in network.named_modules() if isinstance(m, nn.Linear)}
    outputs: dict[str, list[th.Tensor]] = defaultdict(list)
    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=name: outputs[name].append(out)) for name, m in linears.items()
    ]
    try:
        network(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    masks = {}
    for name, module in linears.items():
        if outputs[name]:
            out = th.cat([o.reshape(-1, module.out_features) for o in outputs[name]])
            score = out.abs().mean(0)
            masks[name] = score < score.mean() * threshold
    return masks


def dormant_summary(masks: dict[str, th.Tensor], per_layer: bool = False) -> tuple[float, dict[str, float]]:
    """The neuron-weighted dormant ratio over all layers and, if asked, each layer's ratio."""
    dormant = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    layers = {name: float(m.float().mean()) for name, m in masks.items()} if per_layer else {}
    return dormant / max(total, 1), layers


# --- ReDo --------------------------------------------------------------------------------------------------------


@dataclass
class RecycleLayer:
    """A hidden ``Linear`` whose units can be recycled, the LayerNorms between it and the layers reading it, and
    those layers with the first input column its units occupy (the critic reads ``[trunk(x), action]``)."""

    name: str
    incoming: nn.Linear
    norms: list[nn.LayerNorm] = field(default_factory=list)
    outgoing: list[tuple[nn.Linear, int]] = field(default_factory=list)


def _linear_sequentials(network: nn.Module) -> list[tuple[str, nn.Sequential]]:
    return [
        (name, m)
        for name, m in network.named_modules()
        if isinstance(m, nn.Sequential) and any(isinstance(c, nn.Linear) for c in m.children())
    ]


def recycle_layers(network: nn.Module) -> list[RecycleLayer]:
    """
    The recyclable layers of a DrM network: inside each ``nn.Sequential``, every ``Linear`` but the last feeds the
    next one; the ``trunk``'s last ``Linear`` feeds the first ``Linear`` of every head (columns from 0). A head's last
    ``Linear`` is an output layer and is not recycled.

    :param network: an :class:`~pvrw.drm.networks.Actor`, :class:`~pvrw.drm.networks.Critic` or
        :class:`~pvrw.drm.networks.ValueNetwork` (any module built the same way)
    """
    trunk = getattr(network, "trunk", None)
    sequentials = _linear_sequentials(network)
    heads = [seq for _, seq in sequentials if seq is not trunk]
    layers = []
    for name, seq in sequentials:
        children = list(seq.named_children())
        indices = [i for i, (_, c) in enumerate(children) if isinstance(c, nn.Linear)]
        for position, i in enumerate(indices):
            following = indices[position + 1] if position + 1 < len(indices) else len(children)
            norms = [c for _, c in children[i + 1 : following] if isinstance(c, nn.LayerNorm)]
            if position + 1 < len(indices):
                outgoing = [(children[following][1], 0)]
            elif seq is trunk:
                outgoing = [(next(c for c in head.children() if isinstance(c, nn.Linear)), 0) for head in heads]
            else:
                continue  # an output layer
            layers.append(RecycleLayer(f"{name}.{children[i][0]}" if name else children[i][0], children[i][1], norms,
                                       outgoing))  # fmt: skip
    return layers


@th.no_grad()
def redo_scores(network: nn.Module, layers: list[RecycleLayer], *inputs: th.Tensor) -> dict[str, th.Tensor]:
    """ReDo scores ``s_i = mean|a_i| / (mean_j mean|a_j| + 1e-9)`` of each layer's units, ``a`` being the input of the
    first layer that reads them (the post-activation values)."""
    raw: dict[str, th.Tensor] = {}
    handles = []
    for layer in layers:
        reader, first = layer.outgoing[0]
        width = layer.incoming.out_features

        def hook(_m: nn.Module, args: tuple, name: str = layer.name, first: int = first, width: int = width) -> None:
            if name not in raw:  # scored at once: a later in-place op must not change it
                raw[name] = args[0][..., first : first + width].abs().reshape(-1, width).mean(0)

        handles.append(reader.register_forward_pre_hook(hook))
    try:
        network(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: score / (score.mean() + 1e-9) for name, score in raw.items()}


def _zero_state(optimizer: th.optim.Optimizer | None, param: nn.Parameter, index: Any) -> None:
    """Zero the optimizer's per-entry state (Adam ``exp_avg``, ``exp_avg_sq``, ...) of ``param[index]``."""
    if optimizer is None:
        return
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, th.Tensor) and value.shape == param.shape:
            value[index] = 0


@th.no_grad()
def recycle(layers: list[RecycleLayer], masks: dict[str, th.Tensor], optimizer: th.optim.Optimizer | None) -> int:
    """
    Recycle the units in ``masks``: incoming weights re-drawn with :func:`~pvrw.drm.networks.weight_init`, bias 0,
    LayerNorm gain 1 and bias 0, outgoing weights 0, and their optimizer moments zeroed. Incoming weights are
    re-drawn for every layer first and outgoing weights zeroed afterwards, so a unit's outgoing weights are zero even
    when the unit reading it was recycled as well.

    :return: the number of units recycled
    """
    count = 0
    for layer in layers:
        mask = masks.get(layer.name)
        if mask is None or not bool(mask.any()):
            continue
        count += int(mask.sum())
        weight = layer.incoming.weight
        fresh = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        fresh = fresh.to_empty(device=weight.device).to(weight.dtype)
        weight_init(fresh)
        weight[mask] = fresh.weight[mask]
        _zero_state(optimizer, weight, mask)
        for param in [layer.incoming.bias, *(norm.bias for norm in layer.norms)]:
            if param is not None:
                param[mask] = 0.0
                _zero_state(optimizer, param, mask)
        for norm in layer.norms:
            if norm.weight is not None:
                norm.weight[mask] = 1.0
                _zero_state(optimizer, norm.weight, mask)
    for layer in layers:
        mask = masks.get(layer.name)
        if mask is None or not bool(mask.any()):
            continue
        for reader, first in layer.outgoing:
            columns = first + th.nonzero(mask).flatten()
            reader.weight[:, columns] = 0.0
            _zero_state(optimizer, reader.weight, (slice(None), columns))
    return count


def redo(
    network: nn.Module, optimizer: th.optim.Optimizer | None, *inputs: th.Tensor, tau: float = 0.1
) -> dict[str, int]:
    """
    One ReDo step on ``network``: score its hidden units on ``inputs`` and recycle those with ``s <= tau``.

    :param network: the network (its optimizer's state is updated too)
    :param optimizer: the optimizer of ``network`` (None: no state to reset)
    :param inputs: forward inputs (a batch of encoded observations; and actions for the critic)
    :param tau: dormancy threshold (0.1, the ReDo paper's value for recycling)
    :return: number of recycled units per layer name
    """
    layers = recycle_layers(network)
    masks = {name: score <= tau for name, score in redo_scores(network, layers, *inputs).items()}
    recycle(layers, masks, optimizer)
    return {name: int(mask.sum()) for name, mask in masks.items()}


# --- LayerNorm in the heads and resets ---------------------------------------------------------------------------


def add_head_norm(network: nn.Module) -> int:
    """
    Insert ``LayerNorm(out_features)`` after every hidden ``Linear`` of ``network``'s heads (every ``nn.Sequential``
    but the ``trunk``) that has no LayerNorm before the next ``Linear``.

    :return: the number of LayerNorms inserted
    """
    trunk = getattr(network, "trunk", None)
    inserted = 0
    for _, seq in _linear_sequentials(network):
        if seq is trunk:
            continue
        i = 0
        while i < len(seq):
            rest = list(seq)[i + 1 :]
            if isinstance(seq[i], nn.Linear) and any(isinstance(m, nn.Linear) for m in rest):
                until_next = rest[: next(j for j, m in enumerate(rest) if isinstance(m, nn.Linear))]
                if not any(isinstance(m, nn.LayerNorm) for m in until_next):
                    linear = seq[i]
                    seq.insert(i + 1, nn.LayerNorm(linear.out_features, device=linear.weight.device))
                    inserted += 1
            i += 1
    return inserted


@th.no_grad()
def reinitialise(network: nn.Module) -> None:
    """Re-initialise a network as it was built: :func:`~pvrw.drm.networks.weight_init`, LayerNorms to 1 and 0."""
    for module in network.modules():
        if isinstance(module, nn.LayerNorm):
            module.reset_parameters()
    network.apply(weight_init)


def rebuild_optimizers_and_target(policy: DrMPolicy, learning_rate: float) -> None:
    """After a change of architecture: a new target critic (a copy of the critic) and new optimizers."""
    for name in NETWORKS.values():
        module = getattr(policy, name)
        if module is not None:
            module.__dict__.pop("optimizer", None)  # not deep-copied into the target below
    policy.critic_target = copy.deepcopy(policy.critic)
    policy.critic_target.train(True)
    policy.critic_target.requires_grad_(False)
    for name in NETWORKS.values():
        module = getattr(policy, name)
        if module is not None:
            parameters = list(module.parameters())
            if name == "actor" and getattr(policy, "actor_features_extractor", None) is not None:
                parameters += list(policy.actor_features_extractor.parameters())  # an actor with its own encoder
            module.optimizer = policy.make_optimizer(parameters, learning_rate)
