"""Config values checked against the type hints of the constructors they are passed to.

A config's values come from YAML (numbers, strings, booleans, null, lists, mappings), so ``--set batch_size=abc``
is a string where ``DrM(batch_size: int)`` wants an integer. Without a check it is written to ``config.yaml`` and
fails at the first update, deep in torch. Here each value is compared with the constructor's annotation (or, where
there is none, its default's type); an annotation this module does not understand accepts anything.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from collections.abc import Iterable
from typing import Any

_UNKNOWN = None  # "cannot tell": the value is accepted


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, tuple[Any, Any]]:
    """``name -> (annotation, default)`` of ``cls.__init__`` and the ``__init__`` of its bases (most derived wins)."""
    found: dict[str, tuple[Any, Any]] = {}
    for klass in inspect.getmro(cls):
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is simply not checked
            hints = {}
        for name, param in inspect.signature(init).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or name == "self" or name in found:
                continue
            found[name] = (hints.get(name, inspect.Parameter.empty), param.default)
    return found


def _conforms(value: Any, tp: Any) -> bool | None:
    """Whether a YAML value fits annotation ``tp``; ``None`` when ``tp`` is not understood."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    if tp is None or tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        results = [_conforms(value, arg) for arg in args]
        return True if any(r is not False for r in results) else False
    if origin is typing.Literal:
        return value in args
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (dict, collections.abc.Mapping) or origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if tp in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_conforms(v, a) is not False for v, a in zip(value, args))
        item = args[0] if args else Any
        return all(_conforms(v, item) is not False for v in value)
    if origin is collections.abc.Callable or tp is collections.abc.Callable:
        return callable(value)
    if tp is type or origin is type:
        return isinstance(value, (str, type))  # a class, or its import path ("package.module:Name")
    if isinstance(tp, type):
        return isinstance(value, tp)
    return _UNKNOWN


def describe(tp: Any) -> str:
    """An annotation in words (``int | None`` -> ``an integer or null``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(arg) for arg in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list [{', '.join(describe(a).removeprefix('an ').removeprefix('a ') for a in args)}]"
    words = {
        type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
        dict: "a mapping", list: "a list", tuple: "a list",
    }  # fmt: skip
    if tp in words:
        return words[tp]
    if origin in words:
        return words[origin]
    if origin is collections.abc.Callable or tp is collections.abc.Callable:
        return "a schedule (a callable, set from Python)"
    if tp is type or origin is type:
        return "a class ('package.module:Name')"
    return getattr(tp, "__name__", str(tp))


def check_kwargs_types(kwargs: dict[str, Any], classes: Iterable[type], prefix: str = "") -> str | None:
    """The first value of ``kwargs`` that fits the matching ``__init__`` parameter of none of ``classes``.

    :param prefix: put before the key in the message (``"policy_kwargs."``).
    :return: one line naming the key, the value and the expected type; ``None`` when every value fits.
    """
    hinted = [(cls, _hints(cls)) for cls in classes]
    for key, value in kwargs.items():
        candidates = [(cls, hints[key]) for cls, hints in hinted if key in hints]
        if not candidates:
            continue  # unknown keys are reported elsewhere (or passed on through **kwargs)
        expected = []
        for cls, (tp, default) in candidates:
            if tp is inspect.Parameter.empty and type(default) in (bool, int, float, str):
                tp = type(default)
            if _conforms(value, tp) is not False:
                break
            expected.append((cls, tp))
        else:
            cls, tp = expected[0]
            hint = f" (write {int(value)})" if tp is int and isinstance(value, float) and value.is_integer() else ""
            return (
                f"{prefix}{key}: {cls.__name__} takes {describe(tp)}, got {value!r} ({type(value).__name__}){hint}"
            )
    return None
