"""The DINOv2 entries: ``dinov2`` (ViT-B/14, CLS, 768) and ``dinov2_reg`` (ViT-B/14 with 4 registers, CLS + registers).

Each entry is a small function registered with :func:`~pvrw.backbones.registry.register_backbone` when
:mod:`pvrw.backbones` is imported. Facts (token layouts, normalisation, file formats) follow
shared/reference/backbones.md.

Position embeddings (the 37x37 table of the weight files is resampled to the requested grid once, at load):

* ``dinov2`` (no registers): option ``pos_embed_interp``. The default ``"meta"`` reproduces Meta's original
  ``dinov2_vitb14`` (torch.hub / facebookresearch/dinov2: bicubic, no antialias, ``scale_factor=(g+0.1)/37``), the
  model DINOv2 was published with. ``"transformers"`` reproduces HF ``Dinov2Model`` (bicubic, no antialias,
  ``size=g``) and ``"timm"`` timm's ``vit_base_patch14_dinov2`` (bicubic, antialias). They agree at 518 and differ
  elsewhere: with equal weights the CLS differs by ~0.1% at 224 and ~3% at 112 between the HF and timm rules.
  The ``"meta"`` rule was checked once against Meta's own ``DinoVisionTransformer`` (the code-only ``dinov2``
  0.0.1.dev2 wheel, same Meta-format file): max |CLS difference| < 1e-6 at 28, 112 and 224 px, where the other two
  rules differed by 1.6-3% (112) and 0.4-1.4% (224). That wheel pins torch 2.0, so this is not a repository test.
* ``dinov2_reg``: Meta's original, HF ``Dinov2WithRegistersModel`` and timm all use bicubic with antialias and
  ``size=g``, so there is one rule.
"""

from __future__ import annotations

import math
import re

import torch

from pvrw.backbones.config import BackboneCfg
from pvrw.backbones.registry import register_backbone
from pvrw.backbones.vit import POS_EMBED_RULES, resample_grid, vit_cfg
from pvrw.backbones.weights import HFFile, WeightsFormatError, WeightSources

_HF_LAYER = {  # transformers Dinov2 layer keys (v5 and older names) -> timm block keys
    "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "attention.o_proj": "attn.proj", "attention.output.dense": "attn.proj",
}
_HF_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "query": 0, "key": 1, "value": 2}


def transformers_to_meta(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` keys -> Meta DINOv2 keys (``blocks.N...``)."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], list] = {}
    simple = {"embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
              "embeddings.position_embeddings": "pos_embed", "embeddings.register_tokens": "register_tokens",
              "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
              "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
              "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    for key, value in state.items():
        if key in simple:
            out[simple[key]] = value
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", key)
        if m is None:
            out[key] = value  # left for the strict check to report
            continue
        idx, middle, leaf = int(m.group(1)), m.group(2), m.group(3)
        part = middle.rsplit(".", 1)[-1]
        if middle.startswith("attention.") and part in _HF_QKV:
            qkv.setdefault((idx, leaf), [None] * 3)[_HF_QKV[part]] = value
        elif leaf == "lambda1" and f"{middle}.lambda1" in _HF_LAYER:
            out[f"blocks.{idx}.{_HF_LAYER[middle + '.lambda1']}"] = value
        elif middle in _HF_LAYER:
            out[f"blocks.{idx}.{_HF_LAYER[middle]}.{leaf}"] = value
        else:
            out[key] = value
    for (idx, leaf), parts in qkv.items():
        if any(p is None for p in parts):
            raise WeightsFormatError(f"transformers checkpoint: layer {idx} lacks one of query/key/value {leaf}.")
        out[f"blocks.{idx}.attn.qkv.{leaf}"] = torch.cat(parts, 0)
    return out


def _dinov2_to_timm(state, fmt, meta, model, resolution, registers: bool, rule: str) -> dict[str, torch.Tensor]:
    """Meta / transformers / timm DINOv2 files -> timm ``vit_base_patch14[_reg4]_dinov2`` keys at this grid."""
    if fmt.startswith("transformers"):
        config = (meta or {}).get("config", {})
        if config.get("patch_size", 14) != 14 or config.get("hidden_size", 768) != 768:
            raise WeightsFormatError(f"transformers config is patch {config.get('patch_size')}, hidden "
                                     f"{config.get('hidden_size')}: not DINOv2 ViT-B/14.")
        state = transformers_to_meta(state)
        fmt = "meta_dinov2"
    state = dict(state)
    grid = model.patch_embed.grid_size[0]
    if fmt == "meta_dinov2":
        state.pop("mask_token", None)
        state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}  # chunked blocks
        if "register_tokens" in state:  # timm reg4 model: cls and registers carry no pos-embed slot
            state["reg_token"] = state.pop("register_tokens")
            state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
            state["pos_embed"] = state["pos_embed"][:, 1:]
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3:
        prefix = 0 if registers else 1
        patch = pos[:, prefix:]
        if math.isqrt(patch.shape[1]) ** 2 == patch.shape[1]:
            state["pos_embed"] = torch.cat([pos[:, :prefix], resample_grid(patch, grid, rule)], dim=1)
    return state



_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/"


@register_backbone
def dinov2(depth: int = 12) -> BackboneCfg:
    """DINOv2 ViT-B/14, CLS token after the final LayerNorm (768).

    :param depth: transformer blocks (12 = ViT-B); fewer only to test the loading code fast.
    """
    return vit_cfg(
        "dinov2", "vit_base_patch14_dinov2", registers=False, patch=14, depth=depth,
        architecture="DINOv2 ViT-B/14 (timm vit_base_patch14_dinov2), CLS token after final norm",
        weights=WeightSources(
            filenames=("dinov2_vitb14_pretrain.pth",),
            hf_files=(HFFile("timm/vit_base_patch14_dinov2.lvd142m", "model.safetensors"),
                      HFFile("facebook/dinov2-base", "model.safetensors", transformers_folder=True)),
            url=_DINOV2_URL + "dinov2_vitb14_pretrain.pth", size="346 MB", licence="Apache-2.0"),
        formats=("meta_dinov2", "timm_vit", "transformers_dinov2"),
        convert_state=lambda s, f, m, model, r, pos_embed_interp="meta", **_: _dinov2_to_timm(
            s, f, m, model, r, registers=False, rule=pos_embed_interp),
        options={"pos_embed_interp": POS_EMBED_RULES},
        option_doc={"pos_embed_interp": "how the 37x37 position table is resampled: meta (original DINOv2, "
                                        "default), transformers (HF Dinov2Model), timm"},
        description="DINOv2 ViT-B/14 CLS, 768")


@register_backbone
def dinov2_reg(depth: int = 12) -> BackboneCfg:
    """DINOv2 ViT-B/14 with 4 registers: CLS and the 4 register tokens concatenated (3840), or CLS only."""
    return vit_cfg(
        "dinov2_reg", "vit_base_patch14_reg4_dinov2", registers=True, patch=14, depth=depth,
        architecture="DINOv2 ViT-B/14 + 4 registers (timm vit_base_patch14_reg4_dinov2), [cls, reg0..reg3] after "
                     "final norm",
        weights=WeightSources(
            filenames=("dinov2_vitb14_reg4_pretrain.pth",),
            hf_files=(HFFile("timm/vit_base_patch14_reg4_dinov2.lvd142m", "model.safetensors"),
                      HFFile("facebook/dinov2-with-registers-base", "model.safetensors", transformers_folder=True)),
            url=_DINOV2_URL + "dinov2_vitb14_reg4_pretrain.pth", size="~346 MB", licence="Apache-2.0"),
        formats=("meta_dinov2", "timm_vit", "transformers_dinov2_reg"),
        convert_state=lambda s, f, m, model, r, **_: _dinov2_to_timm(s, f, m, model, r, registers=True, rule="timm"),
        tokens="cls+registers",
        description="DINOv2 ViT-B/14 reg4, CLS + 4 registers, 3840")

