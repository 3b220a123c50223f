"""Readouts of a timm VisionTransformer: which tokens (``tokens=``) of which blocks (``layers=``) become the features.

``tokens=`` (all taken after the ViT's final norm):

* ``"cls"``: the CLS token, ``(D,)``;
* ``"cls+registers"``: CLS and the register tokens concatenated, ``((1+R)*D,)`` (register models only);
* ``"mean"``: the mean of the patch tokens (CLS and registers excluded), ``(D,)``;
* ``"cls+mean"``: CLS then that mean, ``(2*D,)``;
* ``"patches"``: the patch tokens as a map, ``(D, h, w)`` with ``h = w = side / patch``.

``layers=``: ``None`` (the last block, the default) or block indices such as ``(-1, -2, -3, -4)`` (negative counts
from the last block). Each listed block's tokens go through the final norm (as DINOv2's ``get_intermediate_layers(...,
norm=True)`` linear probes do), the ``tokens=`` readout is taken from each, and the results are concatenated in the
order given along the feature axis, the channel axis for ``"patches"``: ``L`` layers give ``(L*D,)``, ``(L*(1+R)*D,)``,
``(L*2*D,)`` or ``(L*D, h, w)``. Indices are stored as negative numbers (``layers=(11,)`` and ``(-1,)`` of a 12-block
ViT are the same readout), and ``(-1,)`` is the default itself, so both share the default's cache key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

TOKENS = ("cls", "cls+registers", "mean", "cls+mean", "patches")
TOKENS_DOC = ("cls: CLS token (D); cls+registers: CLS and registers ((1+R)*D, register models); mean: mean of the "
              "patch tokens (D); cls+mean: both (2D); patches: patch-token map (D, h, w)")
LAYERS_DOC = ("blocks whose tokens are read, e.g. -1,-2,-3,-4 (each after the final norm, read out by tokens= and "
              "concatenated; default: the last block)")


def parse_layers(layers: Any, depth: int) -> tuple[int, ...] | None:
    """``layers=`` as given (``None``, an int, a sequence, or ``"-1,-2"``) -> negative block indices, or None.

    :param depth: number of blocks of the ViT.
    :raises ValueError: an index outside the ViT, a repeated index, or text that is not integers.
    """
    if layers is None or (isinstance(layers, str) and layers.strip().lower() in ("", "last", "none")):
        return None
    if isinstance(layers, str):
        try:
            layers = [int(p) for p in layers.replace(" ", "").split(",") if p]
        except ValueError:
            raise ValueError(f"layers={layers!r}: expected comma-separated block indices such as "
                             "-1,-2,-3,-4.") from None
    elif isinstance(layers, int):
        layers = [layers]
    elif not isinstance(layers, Sequence) or not all(isinstance(i, int) for i in layers):
        raise ValueError(f"layers={layers!r}: expected block indices such as (-1, -2, -3, -4).")
    bad = [i for i in layers if not -depth <= i < depth]
    if bad or not layers:
        raise ValueError(f"layers={tuple(layers)}: this ViT has {depth} blocks; use indices from {-depth} to "
                         f"{depth - 1} (-1 = the last block).")
    out = tuple(i - depth if i >= 0 else i for i in layers)
    if len(set(out)) != len(out):
        raise ValueError(f"layers={tuple(layers)} names a block twice.")
    return None if out == (-1,) else out


def readout_shape(tokens: str, layers: tuple[int, ...] | None, dim: int, registers: int,
                  grid: tuple[int, int]) -> tuple[int, ...]:
    """Per-frame feature shape of a readout (see the module docstring), without building anything."""
    n = len(layers) if layers else 1
    if tokens == "patches":
        return (n * dim, *grid)
    width = {"cls": 1, "cls+registers": 1 + registers, "mean": 1, "cls+mean": 2}[tokens]
    return (n * width * dim,)


def check_readout(tokens: str, registers: int) -> None:
    """Refuse ``cls+registers`` on a ViT without registers, and unknown ``tokens``, in one line."""
    if tokens not in TOKENS:
        raise ValueError(f"tokens={tokens!r} is not one of {TOKENS}.")
    if tokens == "cls+registers" and not registers:
        raise ValueError("tokens='cls+registers' needs a ViT with register tokens; this one has none (use 'cls').")


class ViTReadout(nn.Module):
    """A timm ``VisionTransformer`` (``weights_module``: weight files load into it) read out by ``tokens``/``layers``.

    :param vit: a timm VisionTransformer built at the side frames are resized to.
    :param tokens: one of :data:`TOKENS`.
    :param layers: negative block indices (:func:`parse_layers`), or None for the last block.
    """

    def __init__(self, vit: nn.Module, tokens: str = "cls", layers: tuple[int, ...] | None = None) -> None:
        super().__init__()
        check_readout(tokens, getattr(vit, "num_reg_tokens", 0))
        self.weights_module = vit
        self.tokens = tokens
        self.layers = layers

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.weights_module.patch_embed.grid_size)

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """Normed tokens ``(N, prefix + h*w, D)`` of one block -> this readout's features."""
        vit = self.weights_module
        prefix = vit.num_prefix_tokens
        if self.tokens == "cls":
            return x[:, 0]
        if self.tokens == "cls+registers":
            return x[:, :prefix].flatten(1)
        patches = x[:, prefix:]
        if self.tokens == "mean":
            return patches.mean(1)
        if self.tokens == "cls+mean":
            return torch.cat([x[:, 0], patches.mean(1)], dim=1)
        h, w = self.grid
        return patches.transpose(1, 2).reshape(len(x), -1, h, w)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normed tokens of each block in ``layers`` (in that order); stops after the deepest one needed."""
        vit = self.weights_module
        depth = len(vit.blocks)
        wanted = [depth + i for i in self.layers]
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        outs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(vit.blocks[: max(wanted) + 1]):
            x = block(x)
            if i in wanted:
                outs[i] = vit.norm(x)
        return [outs[i] for i in wanted]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.layers:
            return self.read(self.weights_module.forward_features(x))
        return torch.cat([self.read(t) for t in self.block_outputs(x)], dim=1)

    def extra_repr(self) -> str:
        return f"tokens={self.tokens!r}, layers={self.layers}"
