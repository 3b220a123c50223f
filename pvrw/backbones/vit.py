"""What the ViT entries (:mod:`~pvrw.backbones.dinov2`, :mod:`~pvrw.backbones.vc1`) share: a timm VisionTransformer
built at the requested side, its readouts (:mod:`~pvrw.backbones.readouts`), and position-table resampling.

Position embeddings. Weight files hold the table of the native grid (37x37 for DINOv2, 14x14 for VC-1); the model
is built at the requested side and the table is resampled once at load, with the rule of the code each family was
published with (see :data:`POS_EMBED_RULES` and the entry modules).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pvrw.backbones.config import IMAGENET_MEAN, IMAGENET_STD, BackboneCfg
from pvrw.backbones.readouts import LAYERS_DOC, TOKENS, TOKENS_DOC, ViTReadout, parse_layers, readout_shape
from pvrw.backbones.weights import WeightsFormatError

POS_EMBED_RULES = ("meta", "transformers", "timm")


def resample_grid(pos: torch.Tensor, grid: int, rule: str) -> torch.Tensor:
    """Resample a square patch position table ``(1, M*M, D)`` to ``(1, grid*grid, D)``.

    :param rule: ``"meta"`` (bicubic, no antialias, ``scale_factor=(grid+0.1)/M``, DINOv2's original),
        ``"transformers"`` (bicubic, no antialias, ``size``; also timm 0.6 ``resize_pos_embed``), ``"timm"`` (bicubic,
        antialias, ``size``; timm 1.x ``resample_abs_pos_embed``).
    """
    old = math.isqrt(pos.shape[1])
    if old * old != pos.shape[1]:
        raise WeightsFormatError(f"position table of {pos.shape[1]} entries is not a square grid.")
    if old == grid:
        return pos
    dim = pos.shape[-1]
    table = pos.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
    if rule == "meta":
        scale = (grid + 0.1) / old
        table = F.interpolate(table, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    elif rule in ("transformers", "timm"):
        table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False,
                              antialias=rule == "timm")
    else:
        raise ValueError(f"unknown pos-embed rule {rule!r}; one of {POS_EMBED_RULES}.")
    return table.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos.dtype)


def vit_cfg(name: str, timm_arch: str, registers: bool, patch: int, depth: int, tokens: str = "cls",
            options: dict[str, tuple] | None = None, option_doc: dict[str, str] | None = None,
            **fields: Any) -> BackboneCfg:
    """A ViT-B entry: every readout of :mod:`~pvrw.backbones.readouts` (``tokens`` is the entry's default) plus the
    entry's own ``options``."""
    n_reg = 4 if registers else 0
    choices = (tokens, *(t for t in TOKENS if t != tokens and (registers or t != "cls+registers")))

    def build(resolution: int, tokens: str = tokens, layers: tuple[int, ...] | None = None,
              pos_embed_interp: str = "timm") -> nn.Module:
        import timm

        # weight_init="skip": layers keep PyTorch's default init (5x faster than timm's trunc-normal pass over 86M
        # weights; "random" is for smoke tests, and a weight file overwrites every tensor anyway); the token and
        # position tables, which only timm's init_weights fills, get timm's init here
        vit = timm.create_model(timm_arch, pretrained=False, img_size=resolution, num_classes=0, depth=depth,
                                weight_init="skip")
        if not vit.pos_embed.is_meta:
            nn.init.trunc_normal_(vit.pos_embed, std=0.02)
            for token in (vit.cls_token, vit.reg_token):
                if token is not None:
                    nn.init.normal_(token, std=1e-6)
        return ViTReadout(vit, tokens, layers)

    def shape(resolution: int, tokens: str = tokens, layers: tuple[int, ...] | None = None, **_: Any
              ) -> tuple[int, ...]:
        return readout_shape(tokens, layers, 768, n_reg, (resolution // patch,) * 2)

    return BackboneCfg(name=name, build_model=build, output_shape=shape, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       normalisation="imagenet", resolution_multiple=patch, min_resolution=patch,
                       default_resolution=224,
                       options={"tokens": choices, "layers": (None,), **(options or {})},
                       option_doc={"tokens": TOKENS_DOC, "layers": LAYERS_DOC, **(option_doc or {})},
                       option_parsers={"layers": lambda v: parse_layers(v, depth)}, **fields)
