"""The ``pvrw`` command line: a thin click layer over the library.

Commands live in their own modules and are imported only when used (``LazyGroup``), so ``pvrw --help`` does not
import torch or mujoco.
"""

from __future__ import annotations

import importlib
import warnings

import click

from pvrw import __version__

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "backbones": "pvrw.cli.backbones_cmd:backbones",
    "download": "pvrw.cli.backbones_cmd:download",
    "record": "pvrw.cli.cache_cmd:record",
    "extract": "pvrw.cli.cache_cmd:extract",
    "cache": "pvrw.cli.cache_cmd:cache",
    "train": "pvrw.cli.train_cmd:train",
    "eval": "pvrw.cli.eval_cmd:eval_",
    "plot": "pvrw.cli.plot_cmd:plot",
    "table": "pvrw.cli.table_cmd:table",
    "sweep": "pvrw.cli.sweep_cmd:sweep",
    "params": "pvrw.cli.params_cmd:params",
    "bench": "pvrw.cli.bench_cmd:bench",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            module_name, attr = self.lazy_commands[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings' signature)
    """pvrw's own warnings (e.g. RandomWeightsWarning) as one line, without the source line of the call."""
    if category.__module__.startswith("pvrw."):
        return f"Warning: {message}\n"
    return _PYTHON_FORMATWARNING(message, category, filename, lineno, line)


_PYTHON_FORMATWARNING = warnings.formatwarning


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pvrw")
def main() -> None:
    """pvrw: train RL agents on pixels or on frozen pretrained visual representations, and compare them.

    \b
    A session:
      pvrw backbones                              # which weights are found
      pvrw train --preset smoke --out runs/smoke  # CPU minutes, end to end
      pvrw eval runs/smoke --episodes 10 --video
      pvrw plot runs/smoke -o smoke.png
      pvrw table runs/                            # one row per configuration
      pvrw sweep --pvr all --seeds 5              # the study's grid

    Every command explains itself: pvrw COMMAND --help.
    """
    previous = warnings.formatwarning
    warnings.formatwarning = _format_warning
    click.get_current_context().call_on_close(lambda: setattr(warnings, "formatwarning", previous))
