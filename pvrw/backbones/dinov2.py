"""The built-in backbones of the study: ``resnet18`` (PIE-G trunk), ``dinov2``, ``dinov2_reg`` and ``vc1``.

Each entry is a small function registered with :func:`~pvrw.backbones.registry.register_backbone`. Facts (layer
cuts, token layouts, normalisation, file formats) follow shared/reference/backbones.md.

Position embeddings. Weight files hold the table of the native grid (37x37 for DINOv2, 14x14 for VC-1); the model
is built at the requested side and the table is resampled once at load:

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
* ``vc1``: eai-vc's ``load_mae_encoder`` uses timm 0.6's ``resize_pos_embed`` (bicubic, no antialias, ``size=g``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pvrw.backbones.registry import IMAGENET_MEAN, IMAGENET_STD, BackboneCfg, register_backbone
from pvrw.backbones.weights import HFFile, WeightsFormatError, WeightSources

PIEG_MEAN = (0.5, 0.5, 0.5)  # PIE-G: obs / 255 - 0.5
PIEG_STD = (1.0, 1.0, 1.0)

# ------------------------------------------------------------------------------------------------ ResNet18 (PIE-G)


def _resnet_trunk_side(side: int) -> int:
    for _ in range(3):  # conv1 (s2), maxpool (s2), layer2 (s2); each gives ceil(x / 2)
        side = -(-side // 2)
    return side


class PiegResNetTrunk(nn.Module):
    """torchvision ResNet18 cut after ``layer2`` as in PIE-G: conv1, bn1, relu, maxpool, layer1, layer2.

    The full ResNet18 is built so that a complete torchvision/timm checkpoint is checked strictly; ``layer3``,
    ``layer4`` and ``fc`` are dropped after loading.
    """

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.weights_module = torchvision.models.resnet18(weights=None)

    def drop_unused(self) -> None:
        for name in ("layer3", "layer4", "avgpool", "fc"):
            setattr(self.weights_module, name, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.weights_module
        return r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))


@register_backbone
def resnet18() -> BackboneCfg:
    """ImageNet ResNet18 trunk as in PIE-G (spatial map kept; PIE-G normalisation ``obs/255 - 0.5``)."""

    def build(resolution: int, bn_mode: str = "frozen") -> nn.Module:
        return PiegResNetTrunk()  # the full net until weights are loaded (strict check), then drop_unused()

    return BackboneCfg(
        name="resnet18",
        architecture="torchvision resnet18: conv1, bn1, relu, maxpool, layer1, layer2 (stride 8, 128 channels)",
        build_model=build,
        output_shape=lambda resolution, **_: (128, _resnet_trunk_side(resolution), _resnet_trunk_side(resolution)),
        mean=PIEG_MEAN, std=PIEG_STD, normalisation="pieg(obs/255-0.5)", resolution_multiple=1, min_resolution=8,
        default_resolution=112,
        weights=WeightSources(
            filenames=("resnet18-f37072fd.pth",),
            hf_files=(HFFile("timm/resnet18.tv_in1k", "model.safetensors"),),
            url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
            size="44.7 MB", licence="BSD-3-Clause (torchvision; ImageNet-derived)"),
        formats=("torchvision_resnet",),
        options={"bn_mode": ("frozen", "pieg")},
        option_doc={"bn_mode": 'BatchNorm: "frozen" = always running statistics (a truly frozen PVR); "pieg" = '
                               "follows .train() like PIE-G's encoder, whose BN layers use batch statistics and update "
                               "their running stats during agent updates (only matters when the backbone sits inside "
                               "a trained module; PVRObservation always runs it in eval)."},
        description="PIE-G ResNet18 trunk, 128 x H/8 x W/8 spatial map",
    )


# ----------------------------------------------------------------------------------------- ViTs (DINOv2, VC-1)

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


class ViTTokens(nn.Module):
    """A timm VisionTransformer returning chosen tokens after the final norm: ``cls`` (D) or ``cls+registers``."""

    def __init__(self, vit: nn.Module, tokens: str) -> None:
        super().__init__()
        self.weights_module = vit
        self.tokens = tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.weights_module.forward_features(x)
        if self.tokens == "cls":
            return tokens[:, 0]
        return tokens[:, : self.weights_module.num_prefix_tokens].flatten(1)


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


def _vit_cfg(name: str, timm_arch: str, registers: bool, patch: int, depth: int, **fields: Any) -> BackboneCfg:
    def build(resolution: int, tokens: str = "cls", pos_embed_interp: str = "timm") -> nn.Module:
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
        return ViTTokens(vit, tokens)

    def shape(resolution: int, tokens: str = "cls", **_: Any) -> tuple[int, ...]:
        return (768 * (5 if tokens == "cls+registers" else 1),)

    return BackboneCfg(name=name, build_model=build, output_shape=shape, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       normalisation="imagenet", resolution_multiple=patch, min_resolution=patch,
                       default_resolution=224, **fields)


_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/"


@register_backbone
def dinov2(depth: int = 12) -> BackboneCfg:
    """DINOv2 ViT-B/14, CLS token after the final LayerNorm (768).

    :param depth: transformer blocks (12 = ViT-B); fewer only to test the loading code fast.
    """
    return _vit_cfg(
        "dinov2", "vit_base_patch14_dinov2", registers=False, patch=14, depth=depth,
        architecture="DINOv2 ViT-B/14 (timm vit_base_patch14_dinov2), CLS token after final norm",
        weights=WeightSources(
            filenames=("dinov2_vitb14_pretrain.pth",),
            hf_files=(HFFile("timm/vit_base_patch14_dinov2.lvd142m", "model.safetensors"),
                      HFFile("facebook/dinov2-base", "model.safetensors", transformers_folder=True)),
            url=_DINOV2_URL + "dinov2_vitb14_pretrain.pth", size="346 MB", licence="Apache-2.0"),
        formats=("meta_dinov2", "timm_vit", "transformers_dinov2"),
        convert_state=lambda s, f, m, model, r, tokens="cls", pos_embed_interp="meta": _dinov2_to_timm(
            s, f, m, model, r, registers=False, rule=pos_embed_interp),
        options={"tokens": ("cls",), "pos_embed_interp": POS_EMBED_RULES},
        option_doc={"tokens": "cls: the CLS token (768)",
                    "pos_embed_interp": "how the 37x37 position table is resampled: meta (original DINOv2, "
                                        "default), transformers (HF Dinov2Model), timm"},
        description="DINOv2 ViT-B/14 CLS, 768")


@register_backbone
def dinov2_reg(depth: int = 12) -> BackboneCfg:
    """DINOv2 ViT-B/14 with 4 registers: CLS and the 4 register tokens concatenated (3840), or CLS only."""
    return _vit_cfg(
        "dinov2_reg", "vit_base_patch14_reg4_dinov2", registers=True, patch=14, depth=depth,
        architecture="DINOv2 ViT-B/14 + 4 registers (timm vit_base_patch14_reg4_dinov2), [cls, reg0..reg3] after "
                     "final norm",
        weights=WeightSources(
            filenames=("dinov2_vitb14_reg4_pretrain.pth",),
            hf_files=(HFFile("timm/vit_base_patch14_reg4_dinov2.lvd142m", "model.safetensors"),
                      HFFile("facebook/dinov2-with-registers-base", "model.safetensors", transformers_folder=True)),
            url=_DINOV2_URL + "dinov2_vitb14_reg4_pretrain.pth", size="~346 MB", licence="Apache-2.0"),
        formats=("meta_dinov2", "timm_vit", "transformers_dinov2_reg"),
        convert_state=lambda s, f, m, model, r, tokens="cls+registers": _dinov2_to_timm(
            s, f, m, model, r, registers=True, rule="timm"),
        options={"tokens": ("cls+registers", "cls")},
        option_doc={"tokens": "cls+registers: [cls, reg0..reg3] concatenated (3840, default); cls: CLS only (768)"},
        description="DINOv2 ViT-B/14 reg4, CLS + 4 registers, 3840")


def _vc1_to_timm(state, fmt, meta, model, resolution, tokens="cls") -> dict[str, torch.Tensor]:
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
    return _vit_cfg(
        "vc1", "vit_base_patch16_224", registers=False, patch=16, depth=depth,
        architecture="VC-1 base = MAE ViT-B/16 encoder (timm vit_base_patch16_224), CLS token after final norm",
        weights=WeightSources(
            filenames=("vc1_vitb.pth",),
            hf_files=(HFFile("facebook/vc1-base", "pytorch_model.bin"),),
            url="https://dl.fbaipublicfiles.com/eai-vc/vc1_vitb.pth",
            size="448 MB (full MAE incl. decoder)", licence="CC-BY-NC-4.0 (non-commercial)"),
        formats=("mae", "timm_vit"),
        convert_state=_vc1_to_timm,
        options={"tokens": ("cls",)},
        option_doc={"tokens": "cls: the CLS token (768)"},
        description="VC-1 base (MAE ViT-B/16) CLS, 768; CC-BY-NC")
