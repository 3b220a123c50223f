"""The ``vc1`` entry: VC-1 base, the MAE ViT-B/16 encoder (CLS token, 768; CC-BY-NC-4.0 weights).

Registered with :func:`~pvrw.backbones.registry.register_backbone` when :mod:`pvrw.backbones` is imported.
Position embeddings: eai-vc's ``load_mae_encoder`` uses timm 0.6's ``resize_pos_embed`` (bicubic, no antialias,
``size=g``), reproduced here by the ``"transformers"`` rule of :func:`~pvrw.backbones.vit.resample_grid`.
"""

from __future__ import annotations

import math

import torch

from pvrw.backbones.config import BackboneCfg
from pvrw.backbones.registry import register_backbone
from pvrw.backbones.vit import resample_grid, vit_cfg
from pvrw.backbones.weights import HFFile, WeightSources


def _vc1_to_timm(state, fmt, meta, model, resolution, **_: object) -> dict[str, torch.Tensor]:
    """VC-1 / MAE checkpoint -> timm ``vit_base_patch16`` keys (eai-vc ``load_mae_encoder``: drop decoder, mask)."""
    state = {k: v for k, v in state.items() if "decoder" not in k and k != "mask_token"}
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3 and math.isqrt(pos.shape[1] - 1) ** 2 == pos.shape[1] - 1:
        grid = model.patch_embed.grid_size[0]
        state["pos_embed"] = torch.cat([pos[:, :1], resample_grid(pos[:, 1:], grid, "transformers")], dim=1)
    return state


@register_backbone
def vc1(depth: int = 12) -> BackboneCfg:
    """VC-1 base: the MAE ViT-B/16 encoder, CLS token after the final LayerNorm (768). CC-BY-NC-4.0 weights."""
    return vit_cfg(
        "vc1", "vit_base_patch16_224", registers=False, patch=16, depth=depth,
        architecture="VC-1 base = MAE ViT-B/16 encoder (timm vit_base_patch16_224), CLS token after final norm",
        weights=WeightSources(
            filenames=("vc1_vitb.pth",),
            hf_files=(HFFile("facebook/vc1-base", "pytorch_model.bin"),),
            url="https://dl.fbaipublicfiles.com/eai-vc/vc1_vitb.pth",
            size="448 MB (full MAE incl. decoder)", licence="CC-BY-NC-4.0 (non-commercial)"),
        formats=("mae", "timm_vit"),
        convert_state=_vc1_to_timm,
        description="VC-1 base (MAE ViT-B/16) CLS, 768; CC-BY-NC")
