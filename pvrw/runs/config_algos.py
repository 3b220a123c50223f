"""The algorithm of a run configuration: the class an ``algo`` name stands for, the constructor keywords a config may
set (``algo_kwargs``, bare ``--set`` keys), and the check of their names and value types.

Split from :mod:`pvrw.runs.config` only to keep modules short; that module re-imports every name. :class:`ConfigError`
is defined here, the lowest of the config modules, because these checks raise it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

#: algorithm name -> "module:Class"
ALGOS: dict[str, str] = {
    "drm": "pvrw.drm:DrM",
    "sac": "stable_baselines3:SAC",
    "td3": "stable_baselines3:TD3",
}


class ConfigError(ValueError):
    """A run configuration is invalid; the message names the offending key and what would be accepted."""


# keys of the algorithm constructor that the run itself decides
_RUN_OWNED_ARGS = {"self", "policy", "env", "seed", "device", "tensorboard_log", "verbose", "_init_setup_model"}


def algo_class_name(algo: str) -> str:
    """``drm`` -> ``DrM``: the class an ``--algo`` name stands for, for messages (no import)."""
    return ALGOS[algo].split(":")[1]


def load_algo_class(algo: str) -> type:
    """Import the algorithm class behind an ``--algo`` name."""
    if algo not in ALGOS:
        raise ConfigError(f"algo: unknown algorithm {algo!r}; choose one of {', '.join(ALGOS)}")
    module_name, attr = ALGOS[algo].split(":")
    return getattr(importlib.import_module(module_name), attr)


def algo_parameters(algo: str) -> set[str]:
    """The constructor keywords a config may set for ``algo`` (its signature minus what the run decides)."""
    params = inspect.signature(load_algo_class(algo).__init__).parameters
    return {
        name
        for name, p in params.items()
        if name not in _RUN_OWNED_ARGS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def check_algo_kwargs(algo_kwargs: dict[str, Any], algo: str, policy: str | None = None) -> None:
    """Raise :class:`ConfigError` naming the first key of ``algo_kwargs`` that ``algo``'s constructor lacks, or the
    first value (``policy_kwargs`` entries included) that does not fit the constructor's type hints.

    :param policy: the run's policy name; ``None`` checks ``policy_kwargs`` against every policy of ``algo``.
    """
    from pvrw.runs.config_types import check_kwargs_types

    valid = algo_parameters(algo)
    bad = sorted(set(algo_kwargs) - valid)
    if bad:
        close = difflib.get_close_matches(bad[0], valid, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"algo_kwargs.{bad[0]}: not an argument of {algo_class_name(algo)}{hint}; "
            f"valid keys: {', '.join(sorted(valid))}"
        )
    algo_class = load_algo_class(algo)
    problem = check_kwargs_types(algo_kwargs, [algo_class])
    if problem is None and isinstance(algo_kwargs.get("policy_kwargs"), dict):
        aliases = getattr(algo_class, "policy_aliases", {})
        policies = [aliases[policy]] if policy in aliases else list(aliases.values()) if policy is None else []
        problem = check_kwargs_types(algo_kwargs["policy_kwargs"], policies, prefix="policy_kwargs.")
    if problem is not None:
        raise ConfigError(problem)
