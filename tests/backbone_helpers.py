"""Test backbones registered for a while and forgotten afterwards (tests elsewhere list the registry)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pvrw.backbones.registry import _CFG_CACHE, _REGISTRY, register_backbone


def forget_backbones(names: Iterable[str]) -> None:
    """Remove ``names`` from the registry and its config cache (a name not registered is ignored)."""
    for name in list(names):
        _REGISTRY.pop(name, None)
        _CFG_CACHE.pop(name, None)


@contextmanager
def registered_backbones(cfgs: dict[str, Any]) -> Iterator[list[str]]:
    """Register each ``name: cfg`` (overwriting), yield the names, forget them on exit."""
    for name, cfg in cfgs.items():
        register_backbone(name, cfg=cfg, overwrite=True)
    try:
        yield list(cfgs)
    finally:
        forget_backbones(cfgs)
