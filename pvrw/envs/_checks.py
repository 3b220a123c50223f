"""Argument checks shared by the env modules."""

from __future__ import annotations

from typing import Any


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ``ValueError`` that lists them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value
