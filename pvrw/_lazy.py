"""Lazy re-exports for package ``__init__`` modules: a public name's module is imported on first use."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """
    Build a module-level ``__getattr__`` (PEP 562) for ``package``.

    :param package: the package's ``__name__``
    :param exports: public name -> module that defines it
    :return: the ``__getattr__`` function; it caches each resolved name in the package namespace
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            module = importlib.import_module(exports[name])
        except AttributeError as err:
            # Python turns an AttributeError raised by __getattr__ into "cannot import name ...", hiding the cause
            raise ImportError(f"importing {exports[name]} (for {package}.{name}) failed: {err}") from err
        value = getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
