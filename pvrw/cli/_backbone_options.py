"""Readout and fine-tuning options of ``pvrw train`` and ``pvrw sweep`` (``--tokens``, ``--layers``, ``--finetune``,
``--bn``, ``--backbone-lr``); they are the run-config keys ``pvr_kwargs.<name>``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from pvrw.backbones.readouts import TOKENS

#: option name -> run-config key
CONFIG_KEYS = {name: f"pvr_kwargs.{name}" for name in ("tokens", "layers", "finetune", "bn", "backbone_lr")}

_HELP = {
    "tokens": f"ViT readout: {', '.join(TOKENS)} (patches: a (D, h, w) map for PatchPolicy). [default: the "
              "backbone's, cls; cls+registers for dinov2_reg]",
    "layers": "ViT blocks read, e.g. -1,-2,-3,-4 (each after the final norm, concatenated). [default: the last]",
    "finetune": "Fine-tune the backbone inside DrM on replayed pixels: none, lastN (e.g. last2), all, lora:R "
                "(e.g. lora:8). [default: frozen features, not fine-tuned]",
    "bn": "BatchNorm of a fine-tuned backbone: frozen (running statistics) or update (PIE-G). [default: frozen]",
    "backbone_lr": "Learning rate of the fine-tuned backbone parameters. [default: the algorithm's]",
}
_SWEEP_NOTE = " Several values make a grid axis: comma-separated ({sep}-separated for --layers)."


def backbone_options(sweep: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding the five options (for ``sweep``: each accepts several values, a grid axis)."""
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(list(CONFIG_KEYS)):
            flag = "--" + name.replace("_", "-")
            text = _HELP[name] + (_SWEEP_NOTE.format(sep="semicolon") if sweep else "")
            if name == "bn" and not sweep:
                command = click.option(flag, name, type=click.Choice(["frozen", "update"]), default=None,
                                       help=text)(command)
            elif name == "backbone_lr" and not sweep:
                command = click.option(flag, name, type=float, default=None, help=text)(command)
            else:
                command = click.option(flag, name, default=None, help=text)(command)
        return command
    return decorate


def to_config_keys(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the five options renamed to their run-config keys (``tokens`` -> ``pvr_kwargs.tokens``)."""
    return {CONFIG_KEYS.get(k, k): v for k, v in options.items()}


def sweep_axes(options: dict[str, Any]) -> dict[str, list[Any]]:
    """Pop the five options from ``options``; return the given ones as grid axes (config key -> values)."""
    axes: dict[str, list[Any]] = {}
    for name, key in CONFIG_KEYS.items():
        raw = options.pop(name, None)
        if raw is None:
            continue
        values = [v.strip() for v in raw.split(";" if name == "layers" else ",") if v.strip()]
        if name == "backbone_lr":
            try:
                values = [float(v) for v in values]
            except ValueError:
                raise click.BadParameter(f"expected numbers, got {raw!r}", param_hint="--backbone-lr") from None
        axes[key] = values
    return axes
