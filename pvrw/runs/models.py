"""Loading a saved Stable-Baselines3 model zip (DrM or any SB3 algorithm) when its class is not known in advance.

Used by ``pvrw record --policy MODEL.zip``. It lives in runs/ rather than feature_cache/ because it imports the
algorithms (pvrw.drm), which sit to the right of the feature cache on the data path.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any


def _candidate_algorithms(path: str) -> list[type]:
    """SB3 algorithm classes that may have saved ``path``, most likely first (from the policy class in the zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
        module = data["policy_class"]["__module__"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a Stable-Baselines3 model zip ({error})") from None
    import stable_baselines3 as sb3

    if module.startswith("pvrw.drm"):
        from pvrw.drm import DrM

        return [DrM]
    on_policy, off_policy = [sb3.PPO, sb3.A2C], [sb3.SAC, sb3.TD3, sb3.DDPG, sb3.DQN]
    package = module.split(".")[1] if module.startswith("stable_baselines3.") else ""
    by_module = [cls for cls in off_policy if cls.__name__.lower() == package]
    return by_module or on_policy  # on-policy algorithms share stable_baselines3.common.policies


def load_sb3_model(path: str | os.PathLike, algorithm: type | None = None) -> Any:
    """Load a Stable-Baselines3 model zip (DrM or any SB3 algorithm) on the CPU; the class is inferred if not given."""
    path = os.fspath(path)
    if algorithm is not None:
        return algorithm.load(path, device="cpu")
    errors = []
    for candidate in _candidate_algorithms(path):
        try:
            return candidate.load(path, device="cpu")
        except Exception as error:  # a wrong class fails in many ways; try the next, report all
            errors.append(f"{candidate.__name__}: {error}")
    raise ValueError(f"could not load {path} as {'; '.join(errors)}; name the algorithm (--algo)")
