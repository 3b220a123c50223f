"""Backbone entries for a user's own timm architecture or torch module (``register_backbone(name, timm_model=...)``
or ``register_backbone(name, module=...)``)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pvrw.backbones.config import IMAGENET_MEAN, IMAGENET_STD, BackboneCfg
from pvrw.backbones.readouts import LAYERS_DOC, TOKENS, TOKENS_DOC, ViTReadout, parse_layers
from pvrw.backbones.weights import HFFile, WeightSources


def timm_backbone_cfg(name: str, timm_model: str, output_shape: tuple[int, ...] | Callable | None = None,
                      resolution_multiple: int | None = None, default_resolution: int | None = None,
                      mean: tuple | None = None, std: tuple | None = None, weights: WeightSources | None = None,
                      timm_kwargs: dict | None = None, description: str = "") -> BackboneCfg:
    """A :class:`BackboneCfg` for any timm architecture with pooled features (``num_classes=0``).

    Mean/std, patch size and weight sources (HF id, URL) are read from timm's pretrained config when not given.
    Weight files are timm state dicts; classifier keys are dropped (the head is removed), all others must match.
    """
    import timm

    pcfg = timm.models.get_pretrained_cfg(timm_model)
    pcfg = pcfg.to_dict() if pcfg is not None else {}
    probe = timm.create_model(timm_model, pretrained=False, num_classes=0, **(timm_kwargs or {}))
    patch = getattr(getattr(probe, "patch_embed", None), "patch_size", (1, 1))
    patch = resolution_multiple or int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    is_vit = hasattr(probe, "patch_embed")
    native = pcfg.get("input_size", (3, 224, 224))[-1]
    # a transformer with blocks and prefix tokens gets the readouts of pvrw.backbones.readouts besides its own pooling
    readable = is_vit and hasattr(probe, "blocks") and hasattr(probe, "num_prefix_tokens")
    registers = int(getattr(probe, "num_reg_tokens", 0) or 0)
    options, option_doc, parsers = {}, {}, {}
    if readable:
        options = {"tokens": ("pooled", *(t for t in TOKENS if registers or t != "cls+registers")), "layers": (None,)}
        option_doc = {"tokens": "pooled: the model's own pooled output (default); " + TOKENS_DOC,
                      "layers": LAYERS_DOC + "; not with tokens=pooled"}
        parsers = {"layers": lambda v: parse_layers(v, len(probe.blocks))}
    shapes: dict[tuple, tuple[int, ...]] = {}

    def build(resolution: int, tokens: str = "pooled", layers: tuple[int, ...] | None = None) -> nn.Module:
        _check_pooled(tokens, layers)
        extra = {"img_size": resolution} if is_vit else {}
        model = timm.create_model(timm_model, pretrained=False, num_classes=0, **extra, **(timm_kwargs or {}))
        return model if tokens == "pooled" else ViTReadout(model, tokens, layers)

    def shape(resolution: int, tokens: str = "pooled", layers: tuple[int, ...] | None = None) -> tuple[int, ...]:
        _check_pooled(tokens, layers)
        if tokens == "pooled" and callable(output_shape):
            return tuple(output_shape(resolution))
        if tokens == "pooled" and output_shape is not None:
            return tuple(output_shape)
        key = (resolution, tokens, layers)
        if key not in shapes:
            with torch.device("meta"):
                model = build(resolution, tokens, layers)
                shapes[key] = tuple(model(torch.zeros(1, 3, resolution, resolution)).shape[1:])
        return shapes[key]

    classifier = pcfg.get("classifier", "head")

    def convert(state, fmt, meta, model, resolution, **_):
        state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
        if is_vit and "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
            from timm.layers import resample_abs_pos_embed

            prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
            grid = model.patch_embed.grid_size
            state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"].float(), list(grid),
                                                        num_prefix_tokens=prefix)
        return state

    if weights is None:
        hf = (HFFile(pcfg["hf_hub_id"]),) if pcfg.get("hf_hub_id") else ()
        url = pcfg.get("url") or None
        weights = WeightSources(filenames=(url.rsplit("/", 1)[-1],) if url else (), hf_files=hf, url=url,
                                licence=pcfg.get("license", "see the model card"))
    return BackboneCfg(
        name=name, architecture=f"timm:{timm_model} (pooled features)", build_model=build, output_shape=shape,
        mean=tuple(mean or pcfg.get("mean", IMAGENET_MEAN)), std=tuple(std or pcfg.get("std", IMAGENET_STD)),
        normalisation="timm-cfg", resolution_multiple=patch if is_vit else 1, min_resolution=patch if is_vit else 1,
        default_resolution=default_resolution or native, weights=weights, formats=("any",), convert_state=convert,
        meta_init=False, options=options, option_doc=option_doc, option_parsers=parsers,
        description=description or f"user timm model {timm_model}")


def _check_pooled(tokens: str, layers: tuple[int, ...] | None) -> None:
    if tokens == "pooled" and layers:
        raise ValueError("layers= reads tokens of several blocks; pick tokens= cls, mean, cls+mean or patches (the "
                         "model's own pooling, tokens='pooled', reads the last block only).")


def module_backbone_cfg(name: str, module: nn.Module | Callable[..., nn.Module],
                        output_shape: tuple[int, ...] | Callable[[int], tuple[int, ...]],
                        mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD, normalisation: str = "custom",
                        resolution_multiple: int = 1, default_resolution: int = 112,
                        weights: WeightSources | None = None, description: str = "") -> BackboneCfg:
    """A :class:`BackboneCfg` for a user torch module (an instance, or a factory ``(resolution) -> nn.Module``).

    An instance carries its own weights (``weights=None`` uses them; fingerprint ``module-sha256:...``); a weight
    file given with ``weights=PATH`` must match its state dict exactly.
    """
    import copy

    if isinstance(module, nn.Module):
        build = lambda resolution: copy.deepcopy(module)  # noqa: E731
    elif callable(module):
        build = module
    else:
        raise TypeError(f"module= must be an nn.Module or a callable returning one, got {type(module).__name__}.")
    shape = output_shape if callable(output_shape) else (lambda resolution: tuple(output_shape))
    return BackboneCfg(
        name=name, architecture=f"user module {type(module).__name__}", build_model=lambda r: build(r),
        output_shape=lambda r: tuple(shape(r)), mean=tuple(mean), std=tuple(std), normalisation=normalisation,
        resolution_multiple=resolution_multiple, min_resolution=resolution_multiple,
        default_resolution=default_resolution, weights=weights or WeightSources(), formats=("any",),
        requires_weights=not isinstance(module, nn.Module), meta_init=False,
        description=description or "user module")

