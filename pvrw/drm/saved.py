"""Checks on Stable-Baselines3 save files before SB3 reads them, with errors that name the file the user gave.

SB3 opens ``path`` and, when that fails, ``path.<suffix>``, so a missing ``model.zip`` is reported as
``model.zip.zip``; a truncated zip fails with an assertion ("No data found in the saved file") or a ``BadZipFile``;
a zip of another algorithm fails deep inside ``load_state_dict``. These helpers say what is wrong instead.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

#: the modules whose policies name an algorithm, for "holds a SAC model: use SAC.load"
_ALGORITHM_PACKAGES = ("stable_baselines3.", "sb3_contrib.")
_DRM_POLICIES = "pvrw.drm.policies"


class SavedModelError(ValueError):
    """A saved model or replay buffer that cannot be loaded: truncated, damaged, or saved by another algorithm."""


def resolve_saved_path(path: str | os.PathLike | io.BufferedIOBase, suffix: str) -> Any:
    """The file SB3 would open for ``path`` (``path`` itself, else ``path.<suffix>``); file objects pass through.

    :raises FileNotFoundError: naming ``path`` as given (and the suffixed name that was tried as well).
    """
    if not isinstance(path, (str, os.PathLike)):
        return path
    given = Path(path)
    if given.is_file():
        return given
    suffixed = Path(f"{given}.{suffix}")
    if given.suffix != f".{suffix}" and suffixed.is_file():
        return suffixed
    tried = f" (nor {suffixed.name})" if given.suffix != f".{suffix}" else ""
    raise FileNotFoundError(errno.ENOENT, f"No such file{tried}", str(given))


def _saved_algorithm(policy_module: str) -> str | None:
    """The algorithm a saved policy's module belongs to (``stable_baselines3.sac.policies`` -> ``SAC``)."""
    if policy_module == _DRM_POLICIES:
        return "DrM"
    if policy_module.startswith(_ALGORITHM_PACKAGES):
        parts = policy_module.split(".")
        return parts[1].upper() if len(parts) > 2 else None
    return None


def check_model_zip(path: str | os.PathLike | io.BufferedIOBase, algo_class: type) -> Any:
    """Check that ``path`` is a complete SB3 model zip saved by ``algo_class``; return the file to load.

    :param algo_class: the class whose ``load`` will read it (``DrM``, ``SAC``, ...).
    :raises FileNotFoundError: no such file (named as given).
    :raises SavedModelError: a truncated or damaged zip, or a model of another algorithm.
    """
    resolved = resolve_saved_path(path, "zip")
    if not isinstance(resolved, Path):
        return resolved
    damaged = (
        f"{resolved} is not a complete {algo_class.__name__} model: the file is truncated or damaged (a copy or a "
        "save that was cut short?); load another checkpoint, or save the model again"
    )
    try:
        with zipfile.ZipFile(resolved) as archive:
            names = set(archive.namelist())
            if "data" not in names or "policy.pth" not in names or archive.testzip() is not None:
                raise SavedModelError(damaged)
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnicodeDecodeError, ValueError) as err:
        if isinstance(err, SavedModelError):
            raise
        raise SavedModelError(f"{damaged} ({type(err).__name__}: {err})") from err
    policy = data.get("policy_class") if isinstance(data, dict) else None
    saved = _saved_algorithm(policy.get("__module__", "")) if isinstance(policy, dict) else None
    expected = {_saved_algorithm(c.__module__) for c in getattr(algo_class, "policy_aliases", {}).values()}
    if saved is not None and saved not in expected:
        where = "pvrw.drm.DrM" if saved == "DrM" else saved
        raise SavedModelError(f"{resolved} holds a {saved} model: use {where}.load, not {algo_class.__name__}.load")
    return resolved


def load_replay_buffer_file(path: str | os.PathLike | io.BufferedIOBase, load: Any) -> None:
    """Call ``load(resolved_path)`` (SB3's ``load_replay_buffer``) with errors that name the file as given.

    :raises FileNotFoundError: no such file. :raises SavedModelError: a truncated or damaged pickle.
    """
    from pvrw.drm.replay_storage import pickle_directory

    resolved = resolve_saved_path(path, "pkl")
    try:
        with pickle_directory(resolved):  # a disk buffer's reference: its storage relative to the file
            load(resolved)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise SavedModelError(
            f"{resolved} is not a complete replay buffer: the file is truncated or damaged ({type(err).__name__}: "
            f"{err}); load another checkpoint, or train on without it"
        ) from err
