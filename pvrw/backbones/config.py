"""What the registry knows about one backbone: :class:`BackboneCfg`, the record every entry function returns.

Kept apart from :mod:`pvrw.backbones.registry` so that entries (built-in or custom) and the registry both import it
without importing each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pvrw.backbones.weights import WeightSources

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class BackboneCfg:
    """Everything the registry knows about one backbone.

    :param name: registry name.
    :param architecture: human-readable architecture and layer cut.
    :param build_model: ``(resolution, **options) -> nn.Module`` with random weights; the module maps normalised
        float images ``(N,3,R,R)`` to features ``(N,*output_shape)``. If it has a ``weights_module`` attribute,
        weight files are loaded into that sub-module; a ``drop_unused()`` method is called after loading.
    :param output_shape: ``(resolution, **options) -> tuple`` per-frame feature shape.
    :param mean: per-channel mean subtracted after scaling to [0, 1].
    :param std: per-channel std divided by after that.
    :param normalisation: short name of the normalisation, for listings and cache keys.
    :param resolution_multiple: the side must be a multiple of this (the ViT patch size).
    :param min_resolution: smallest side allowed.
    :param max_resolution: largest side allowed (rendered frames are at most 2048 px).
    :param default_resolution: side used when none is given.
    :param study_resolutions: the sides used by the study (shown by ``pvrw backbones``).
    :param weights: where the weights come from (:class:`~pvrw.backbones.weights.WeightSources`).
    :param formats: accepted weight-file formats (see :func:`~pvrw.backbones.weights.detect_format`); ``"any"``
        accepts any state dict whose keys match the model.
    :param convert_state: ``(state, fmt, meta, model, resolution, **options) -> state`` turning a file's state dict
        into the model's keys (pos-embed resampling included).
    :param options: option name -> allowed values, the first being the default.
    :param option_doc: option name -> one-line description.
    :param option_parsers: option name -> ``value -> canonical value`` (raising ValueError) for options whose values
        are not a fixed list (``layers=``); ``options[name]`` then holds just the default.
    :param requires_weights: False for modules that carry their own weights (``weights=None`` then uses them).
    :param meta_init: build on the meta device when a weight file will fill every tensor (skips random init);
        False for modules with non-persistent buffers, which a state dict does not hold.
    :param description: one line for listings.
    """

    name: str
    architecture: str
    build_model: Callable[..., nn.Module]
    output_shape: Callable[..., tuple[int, ...]]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    normalisation: str = "imagenet"
    resolution_multiple: int = 1
    min_resolution: int = 1
    max_resolution: int = 2048
    default_resolution: int = 224
    study_resolutions: tuple[int, ...] = (112, 224)
    weights: WeightSources = dataclasses.field(default_factory=WeightSources)
    formats: tuple[str, ...] = ("any",)
    convert_state: Callable[..., dict[str, torch.Tensor]] | None = None
    options: dict[str, tuple] = dataclasses.field(default_factory=dict)
    option_doc: dict[str, str] = dataclasses.field(default_factory=dict)
    option_parsers: dict[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)
    requires_weights: bool = True
    meta_init: bool = True
    description: str = ""

    def resolve_options(self, **options: Any) -> dict[str, Any]:
        """Defaults filled in; unknown options or values raise a ValueError that lists the allowed ones."""
        unknown = set(options) - set(self.options)
        if unknown:
            allowed = ", ".join(f"{k}={v}" for k, v in self.options.items()) or "none"
            raise ValueError(f"Backbone {self.name!r} has no option(s) {sorted(unknown)}; allowed: {allowed}.")
        resolved = {k: v[0] for k, v in self.options.items()}
        for key, value in options.items():
            if value is None:
                continue
            if key in self.option_parsers:
                try:
                    resolved[key] = self.option_parsers[key](value)
                except ValueError as err:
                    raise ValueError(f"{self.name}: {err}") from None
                continue
            if value not in self.options[key]:
                raise ValueError(f"{self.name}: {key}={value!r} is not one of {self.options[key]}.")
            resolved[key] = value
        return resolved

    @property
    def side_rule(self) -> str:
        """The input sides this architecture allows, in words (``"a multiple of 14, at least 14"``)."""
        multiple = f"a multiple of {self.resolution_multiple}, " if self.resolution_multiple > 1 else ""
        return f"{multiple}at least {self.min_resolution}"

    def check_resolution(self, resolution: int) -> int:
        """Return ``resolution`` as an int, or raise a ValueError naming the sides this architecture allows."""
        if int(resolution) != resolution or resolution < self.min_resolution or resolution % self.resolution_multiple:
            raise ValueError(f"Backbone {self.name!r} cannot run at {resolution}x{resolution}: the side must be "
                             f"{self.side_rule} (e.g. {self.study_resolutions}).")
        if resolution > self.max_resolution:  # checked before building: a ViT's position table grows with the side
            raise ValueError(f"Backbone {self.name!r} cannot run at {resolution}x{resolution}: the side must be at "
                             f"most {self.max_resolution} (e.g. {self.study_resolutions}).")
        return int(resolution)

    def nearest_side(self, side: int) -> int:
        """The allowed side (:attr:`side_rule`) nearest to ``side``; the larger one on a tie."""
        step = self.resolution_multiple
        first, last = -(-self.min_resolution // step) * step, self.max_resolution // step * step
        below = max(first, side // step * step)
        above = below + step if below < side else below
        return min(below if side - below < above - side else above, last)
