"""Helpers shared by the run commands: user errors as one line, config layering from options."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import click

from pvrw._diskspace import DiskFullError, disk_full_errno
from pvrw.runs.config import ALGOS, PRESETS, ConfigError, parse_override, read_yaml
from pvrw.runs.layout import RunDirError

#: library errors that are the user's to fix (a file, a setting, a system library); matched by class name so that
#: this module imports none of the heavy modules that define them
USER_ERRORS = frozenset(
    {"GLBackendError", "RendererUnavailableError", "WeightsFormatError", "SavedModelError", "ReplaySpaceError"}
)

REPLAY_STORAGE_HELP = (
    "Where the replay buffer lives: disk (memory-mapped files in RUN_DIR/replay/: a checkpoint writes only the "
    "transitions added since the previous one, RAM holds only what sampling touches) or memory (RAM; every "
    "checkpoint pickles all it holds). A run refuses to start if the disk cannot hold the transitions it will store. "
    "[default: disk]"
)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user errors into one-line click errors (exit 2 for bad input, 1 for missing things)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            raise click.UsageError(str(err)) from None
        except RunDirError as err:  # a run directory in use, or a folder of the user's files
            raise click.ClickException(str(err)) from None
        except FileNotFoundError as err:
            if type(err).__name__ == "WeightsNotFoundError":  # pvrw.backbones.weights, imported only when used
                raise click.ClickException(missing_weights_line(str(err))) from None
            raise click.ClickException(str(err)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise SystemExit(130) from None
        except Exception as err:
            if disk_full_errno(err) is not None:
                raise click.ClickException(disk_full_line(err)) from None
            if not any(cls.__name__ in USER_ERRORS for cls in type(err).__mro__):
                raise
            raise click.ClickException(one_line(str(err))) from None

    return wrapper


def lock_note(line: str) -> None:
    """Say on stderr, as one line, that a run directory's stale lock was taken over."""
    click.echo(f"note: {line}", err=True)


def one_line(message: str) -> str:
    """A multi-line error message as one line."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def missing_weights_line(message: str) -> str:
    """One line for a missing-weights error (its full text, every place looked at, is `pvrw backbones -v NAME`)."""
    first = message.splitlines()[0] if message else "No weights found"
    found = re.search(r"backbone '([^']+)'", first)
    name = found.group(1) if found else "NAME"
    return (
        f"{first} Get them with `pvrw download {name}` on a machine with network (then copy the cache here), "
        f"or pass --weights PATH ('random': smoke tests only); `pvrw backbones -v {name}` lists where pvrw looks."
    )


def config_layers(
    config_file: str | None, options: dict[str, Any], set_items: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The override layers of a command line, lowest precedence first: ``--config`` file, options, ``--set``.

    :param options: option values; ``None`` means "not given" and is left out.
    :return: the layers and their names (for :func:`~pvrw.runs.config.build_config`).
    """
    layers: list[dict[str, Any]] = []
    names: list[str] = []
    if config_file:
        data = read_yaml(config_file)
        if "preset" in data:
            raise ConfigError(f"{config_file}: 'preset' is a command-line option (--preset), not a config key")
        layers.append(data)
        names.append(f"config file {config_file}")
    layers.append({k: v for k, v in options.items() if v is not None})
    names.append("options")
    overrides: dict[str, Any] = {}
    for item in set_items:
        key, value = parse_override(item)
        overrides[key] = value
    layers.append(overrides)
    names.append("--set")
    return layers, names


ALGO_CHOICE = click.Choice(sorted(ALGOS))


def config_options(note: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The config-layering options of ``train`` and ``sweep``: ``--set``, ``--config``, ``--preset``.

    :param note: a sentence appended to each help text (e.g. that the sweep applies them to every run).
    """
    suffix = f" {note}" if note else ""
    options = [
        click.option(
            "--set",
            "set_items",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any config key or algorithm argument (repeatable), e.g. --set n_steps=10 "
            "--set stddev_schedule='linear(1.0,0.1,500000)' --set policy_kwargs.hidden_dim=256 "
            "--set env_kwargs.camera=corner2. Values are YAML. Unknown keys are errors." + suffix,
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            default=None,
            help="YAML file of config keys (as in a run's config.yaml); options and --set override it." + suffix,
        ),
        click.option(
            "--preset",
            type=click.Choice(sorted(PRESETS)),
            default=None,
            help="Named settings under the config file: 'study' (the defaults) or 'smoke' (a CPU-minutes run at 64 "
            "px, or the nearest side the backbone takes, with a small budget, batch and buffer: it checks the "
            "pipeline end to end, it does NOT learn the task)." + suffix,
        ),
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def disk_full_line(error: BaseException) -> str:
    """One line for a full disk: a :class:`~pvrw._diskspace.DiskFullError` says it all; another error is worded."""
    if isinstance(error, DiskFullError):
        return str(error)
    filename = getattr(error, "filename", None)
    where = f" writing {filename}" if filename else ""
    reason = getattr(error, "strerror", None) or " ".join(str(error).split())
    return f"disk full{where} ({reason}); free space, then run the command again"
