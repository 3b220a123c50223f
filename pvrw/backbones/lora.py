"""Low-rank adapters (LoRA, Hu et al. 2021) for the attention projections of a timm ViT.

:class:`LoRALinear` wraps a frozen ``nn.Linear``: ``y = base(x) + scale * (x A^T) B^T`` with ``A`` (rank x in)
randomly initialised (Kaiming-uniform, as the reference ``loralib``) and ``B`` (out x rank) zero, so a freshly wrapped
model computes exactly what the frozen one did; ``scale = alpha / rank``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: the attention projections of a timm ViT block that get adapters
LORA_TARGETS = ("attn.qkv", "attn.proj")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (zero at start).

    :param base: the layer to adapt (its parameters are frozen).
    :param rank: rank of the update.
    :param alpha: scaling numerator; the update is multiplied by ``alpha / rank`` (default ``alpha = rank``: 1).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}.")
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.scale = (rank if alpha is None else alpha) / rank
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        if not self.lora_a.is_meta:
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # code reading .weight (dtype, device, merged value) sees the adapted layer
        return self.base.weight + self.scale * self.lora_b @ self.lora_a

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * nn.functional.linear(nn.functional.linear(x, self.lora_a), self.lora_b)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}"


def add_lora(model: nn.Module, rank: int, alpha: float | None = None,
             targets: tuple[str, ...] = LORA_TARGETS) -> list[str]:
    """Wrap every ``nn.Linear`` of ``model`` whose qualified name ends with one of ``targets`` in a
    :class:`LoRALinear`; freezes nothing else (the caller decides). Returns the wrapped names.

    :raises ValueError: no layer matched (e.g. a CNN: LoRA goes on attention projections).
    """
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]
    if not found:
        raise ValueError(f"no attention projections ({', '.join(targets)}) to put LoRA adapters on: LoRA needs a ViT; "
                         "use finetune='lastN' or 'all' for this backbone.")
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, rank, alpha))
    return [name for name, _ in found]
