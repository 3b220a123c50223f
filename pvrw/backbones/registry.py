"""A timm-style registry of frozen pretrained visual backbones.

Each entry is a small function returning a :class:`BackboneCfg`, registered with :func:`register_backbone`. The
built-ins (``resnet18``, ``dinov2``, ``dinov2_reg``, ``vc1``) live one module per family (:mod:`pvrw.backbones.resnet`,
:mod:`~pvrw.backbones.dinov2`, :mod:`~pvrw.backbones.vc1`) and register themselves when :mod:`pvrw.backbones` is
imported, as timm's model modules do; this module imports none of them. Users add their own timm model or torch
module with ``register_backbone("name", timm_model=...)`` or ``module=...``.

>>> from pvrw.pvr_wrappers import create_backbone, list_backbones
>>> list_backbones()
['dinov2', 'dinov2_reg', 'resnet18', 'vc1']
>>> bb = create_backbone("dinov2", resolution=224)   # weights resolved offline, or a clear WeightsNotFoundError
>>> bb.embed(frames_uint8).shape                      # (N, 768)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pvrw.backbones.config import BackboneCfg
from pvrw.backbones.custom import module_backbone_cfg, timm_backbone_cfg
from pvrw.backbones.weights import (
    WeightsFormatError,
    check_state_dict,
    detect_format,
    file_fingerprint,
    find_weights,
    module_fingerprint,
    read_state_dict,
)

logger = logging.getLogger(__name__)

RANDOM = "random"
RANDOM_INIT_SEED = 0


class UnknownBackboneError(ValueError):
    """A backbone name that is not in the registry."""


class RandomWeightsWarning(UserWarning):
    """A backbone was built with random weights: its features are meaningless (smoke tests only).

    Issued once per :func:`create_backbone` call, through :mod:`warnings` only; silence it with
    ``warnings.simplefilter("ignore", RandomWeightsWarning)``.
    """


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch dtype, or its name (``"bfloat16"``, ``"torch.float16"``, as YAML configs write it)."""
    resolved = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype={dtype!r} is not a floating-point torch dtype; use torch.float32 (default), "
                         "torch.bfloat16 or torch.float16 (or their names, e.g. 'bfloat16').")
    return resolved


_REGISTRY: dict[str, Callable[[], BackboneCfg]] = {}
_CFG_CACHE: dict[str, BackboneCfg] = {}


def register_backbone(fn_or_name: Callable[[], BackboneCfg] | str | None = None, /, *, cfg: BackboneCfg | None = None,
                      timm_model: str | None = None, module: nn.Module | Callable[..., nn.Module] | None = None,
                      overwrite: bool = False, **kwargs: Any):
    """Register a backbone; usable as a decorator or a call.

    * ``@register_backbone`` over ``def name() -> BackboneCfg`` (timm style; the function name is the registry name);
    * ``register_backbone("name", cfg=BackboneCfg(...))``;
    * ``register_backbone("name", timm_model="convnext_tiny", **kw)``: any timm architecture, pooled features
      (``num_classes=0``); see :func:`~pvrw.backbones.custom.timm_backbone_cfg` for ``kw``;
    * ``register_backbone("name", module=my_module_or_factory, output_shape=(512,), **kw)``: a torch module that maps
      normalised float images to features; see :func:`~pvrw.backbones.custom.module_backbone_cfg`.

    :param overwrite: replace an existing entry of the same name (otherwise a ValueError).
    """
    if callable(fn_or_name) and not isinstance(fn_or_name, str):
        return _add(fn_or_name.__name__, fn_or_name, overwrite)
    if fn_or_name is None:
        return lambda fn: register_backbone(fn, overwrite=overwrite)
    name = fn_or_name
    if sum(x is not None for x in (cfg, timm_model, module)) != 1:
        raise ValueError("register_backbone(name, ...) needs exactly one of cfg=, timm_model=, module=.")
    if cfg is not None:
        entry = lambda: dataclasses.replace(cfg, name=name)  # noqa: E731
    elif timm_model is not None:
        entry = lambda: timm_backbone_cfg(name, timm_model, **kwargs)  # noqa: E731
    else:
        entry = lambda: module_backbone_cfg(name, module, **kwargs)  # noqa: E731
    entry()  # fail now, not at first use
    return _add(name, entry, overwrite)


def _add(name: str, entry: Callable[[], BackboneCfg], overwrite: bool):
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"A backbone named {name!r} is already registered (pass overwrite=True to replace it).")
    _REGISTRY[name] = entry
    _CFG_CACHE.pop(name, None)
    return entry


def list_backbones(filter: str = "") -> list[str]:  # noqa: A002 - timm's name for it
    """Sorted registered names; ``filter`` is a substring or an fnmatch pattern (``"dino*"``)."""
    if any(c in filter for c in "*?["):
        return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, filter))
    return sorted(n for n in _REGISTRY if filter in n)


def get_backbone_cfg(name: str) -> BackboneCfg:
    """The :class:`BackboneCfg` of a registered backbone; an unknown name raises :class:`UnknownBackboneError`."""
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if name.lower() in n or n in name.lower()]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownBackboneError(f"Unknown backbone {name!r}. Known backbones: {', '.join(list_backbones())}.{hint} "
                                   "Add your own with pvrw.pvr_wrappers.register_backbone(...).")
    if name not in _CFG_CACHE:
        cfg = _REGISTRY[name]()
        _CFG_CACHE[name] = cfg if cfg.name == name else dataclasses.replace(cfg, name=name)
    return _CFG_CACHE[name]


class FrozenBackbone(nn.Module):
    """A frozen backbone: uint8 RGB frames in, features out; eval mode, no gradients.

    :ivar name: registry name. :ivar cfg: its :class:`BackboneCfg`. :ivar resolution: the side frames are resized to.
    :ivar output_shape: per-frame feature shape. :ivar fingerprint: ``"sha256:<prefix>"`` of the weight file(s),
        ``"random"``, or ``"module-sha256:<prefix>"`` for a user module carrying its own weights.
    :ivar weights_path: the file or folder the weights came from (None for random / module weights).
    :ivar options: the resolved options (``tokens``, ``pos_embed_interp``, ``bn_mode``...).

    ``forward`` runs under ``torch.no_grad`` (its output may feed trainable layers; inference tensors could not be
    saved for backward); :meth:`embed` runs under ``torch.inference_mode``. ``train()`` is a no-op (the module stays in
    eval mode) except for ``bn_mode="pieg"`` (see the ``resnet18`` entry).
    """

    def __init__(self, cfg: BackboneCfg, model: nn.Module, resolution: int, options: dict[str, Any],
                 fingerprint: str, weights_path: Path | None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.name = cfg.name
        self.resolution = resolution
        self.options = dict(options)
        self.output_shape = tuple(cfg.output_shape(resolution, **options))
        self.fingerprint = fingerprint
        self.weights_path = weights_path
        self.dtype = dtype
        self.model = model
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.to(device=device)
        self.model.to(dtype=dtype)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def preprocessing(self) -> str:
        """A stable description of everything between the uint8 frame and the features, for cache keys."""
        # options at None (layers= unset) are left out, so caches written before such an option existed still match
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()) if v is not None)
        return (f"resize=bicubic-antialias-clamp->{self.resolution}x{self.resolution}; scale=1/255; "
                f"norm={self.cfg.normalisation}(mean={self.cfg.mean},std={self.cfg.std}); "
                f"dtype={str(self.dtype).replace('torch.', '')}; options=[{opts}]")

    @property
    def feature_set_name(self) -> str:
        """The default feature-cache set name: the registry name, plus the options that differ from the entry's
        defaults (``dinov2[layers=(-1, -2),tokens=mean]``), so several readouts of one backbone share a cache file."""
        defaults = self.cfg.resolve_options()
        changed = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()) if v != defaults.get(k))
        return f"{self.name}[{changed}]" if changed else self.name

    def train(self, mode: bool = True) -> "FrozenBackbone":
        """Stays in eval mode (frozen); with ``bn_mode="pieg"`` BatchNorm follows ``mode`` like PIE-G's encoder."""
        super().train(False)
        if mode and self.options.get("bn_mode") == "pieg":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train(True)
        return self

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N,3,H,W)`` -> resized, normalised ``(N,3,R,R)`` in the model's dtype."""
        if frames.dtype != torch.uint8:
            raise TypeError(f"{self.name}: expected uint8 RGB frames (0-255), got dtype {frames.dtype}. Pass the raw "
                            "frames; scaling and normalisation happen inside the backbone.")
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"{self.name}: expected frames of shape (N, 3, H, W), got {tuple(frames.shape)}.")
        x = frames.to(self.device, non_blocking=True).float()
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", antialias=True,
                              align_corners=False).clamp_(0.0, 255.0)
        x = (x / 255.0 - self.mean) / self.std
        return x.to(self.dtype)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N,3,H,W)`` -> features ``(N,*output_shape)`` in the backbone's dtype."""
        with torch.no_grad():
            return self.model(self.preprocess(frames))

    def embed(self, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 frames ``(N,3,H,W)`` or ``(N,H,W,3)`` -> float32 features ``(N,*output_shape)``."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise TypeError(f"{self.name}.embed: expected uint8 RGB frames (0-255), got {frames.dtype}. Pass the raw "
                            "frames; scaling and normalisation happen inside the backbone.")
        if frames.ndim != 4 or 3 not in (frames.shape[1], frames.shape[-1]):
            one_frame = frames.ndim == 3 and 3 in (frames.shape[0], frames.shape[-1])
            single = " For one frame pass frames[None]." if one_frame else ""
            raise ValueError(f"{self.name}.embed: expected (N,3,H,W) or (N,H,W,3) uint8 frames, got shape "
                             f"{frames.shape}.{single}")
        channels_last = frames.shape[1] != 3
        out = np.empty((len(frames), *self.output_shape), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(frames), batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(frames[start:start + batch_size]))
                if channels_last:
                    chunk = chunk.permute(0, 3, 1, 2)
                out[start:start + len(chunk)] = self.model(self.preprocess(chunk)).float().cpu().numpy()
        return out

    def __repr__(self) -> str:  # one line; the module tree of a ViT-B is hundreds of lines
        return f"FrozenBackbone({self.extra_repr()})"

    def extra_repr(self) -> str:
        warn = "  RANDOM WEIGHTS (smoke tests only)" if self.fingerprint == RANDOM else ""
        return (f"name={self.name!r}, resolution={self.resolution}, output_shape={self.output_shape}, "
                f"fingerprint={self.fingerprint!r}{warn}")


def _build(cfg: BackboneCfg, resolution: int, options: dict[str, Any], meta_device: bool) -> nn.Module:
    """The architecture; on the meta device when weights will be assigned from a file (skips random init)."""
    if meta_device:
        with torch.device("meta"):
            return cfg.build_model(resolution, **options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)  # "random" is the same random model in every process
        return cfg.build_model(resolution, **options)


def load_weights_into(cfg: BackboneCfg, model: nn.Module, path: Path, resolution: int, **options: Any) -> None:
    """Read ``path``, check its format, convert and load it strictly into ``model`` (refusing any mismatch)."""
    state, meta = read_state_dict(path, name=cfg.name)
    fmt = detect_format(state, meta)
    what = f"Weight file {path} (format {fmt!r}) for backbone {cfg.name!r}"
    if "any" not in cfg.formats and fmt not in cfg.formats:
        raise WeightsFormatError(f"{what}: backbone {cfg.name!r} accepts {', '.join(cfg.formats)} files, and this "
                                 f"one looks like {fmt!r} (keys: {', '.join(sorted(state)[:5])}...). Wrong file?")
    target = getattr(model, "weights_module", model)
    if cfg.convert_state is not None:
        state = cfg.convert_state(state, fmt, meta, target, resolution, **options)
    check_state_dict(target, state, what)
    target.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in (*target.named_parameters(), *target.named_buffers()) if t.is_meta]
    if left:
        raise WeightsFormatError(f"{what}: tensors {left[:5]} were not in the file.")
    if hasattr(model, "drop_unused"):
        model.drop_unused()


def create_backbone(name: str, weights: str | Path | None = None, resolution: int | None = 112,
                    device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                    **options: Any) -> FrozenBackbone:
    """Build a registered backbone, frozen.

    :param name: a name from :func:`list_backbones`.
    :param weights: ``None`` (resolve offline: ``$PVRW_WEIGHTS_DIR``, HF cache, torch hub cache), a file or folder,
        or ``"random"`` (random architecture for smoke tests only; warns, and ``fingerprint == "random"``).
    :param resolution: side of the square image the backbone sees (frames are resized to it); None for the entry's
        default.
    :param device: torch device.
    :param dtype: parameter/compute dtype (float32 default; bfloat16 or float16 where asked), or its name.
    :param options: entry options, e.g. ``tokens="cls"`` for ``dinov2_reg`` (see ``get_backbone_cfg(name).options``).
    :raises UnknownBackboneError: unknown name. :raises WeightsNotFoundError: no weights found offline.
    :raises WeightsFormatError: a weight file of another model or format.
    """
    cfg = get_backbone_cfg(name)
    resolution = cfg.check_resolution(cfg.default_resolution if resolution is None else resolution)
    options = cfg.resolve_options(**options)
    dtype = resolve_dtype(dtype)
    if isinstance(weights, str) and weights == RANDOM:
        msg = (f"Backbone {name!r} is built with RANDOM weights: its features are meaningless. Use this for smoke "
               "tests only.")
        warnings.warn(msg, RandomWeightsWarning, stacklevel=2)  # the one notice: a warnings filter silences it
        model = _build(cfg, resolution, options, meta_device=False)
        if hasattr(model, "drop_unused"):
            model.drop_unused()
        fingerprint, path = RANDOM, None
    elif weights is None and not cfg.requires_weights:
        model = _build(cfg, resolution, options, meta_device=False)
        fingerprint, path = module_fingerprint(model), None
    else:
        path = find_weights(name, cfg.weights, weights)
        model = _build(cfg, resolution, options, meta_device=cfg.meta_init)
        load_weights_into(cfg, model, path, resolution, **options)
        fingerprint = file_fingerprint(path)
        logger.info("Backbone %s: weights %s (%s), licence %s", name, path, fingerprint, cfg.weights.licence)
    return FrozenBackbone(cfg, model, resolution, options, fingerprint, path, device=device, dtype=dtype)


def weights_status(name: str) -> tuple[Path | None, str]:
    """``(path, "")`` if the backbone's weights resolve offline, else ``(None, error text)``."""
    from pvrw.backbones.weights import WeightsNotFoundError

    cfg = get_backbone_cfg(name)
    if not cfg.requires_weights:
        return None, "carries its own weights"
    try:
        return find_weights(name, cfg.weights), ""
    except WeightsNotFoundError as err:
        return None, str(err)
