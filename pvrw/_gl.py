"""Choose MuJoCo's OpenGL backend before ``mujoco`` is imported.

MuJoCo reads ``MUJOCO_GL`` once, at import time. On a machine with an NVIDIA GPU and an EGL library, EGL renders
on the GPU; everywhere else OSMesa (software, ``libosmesa6``) is the only headless backend that works. A value the
user exported is always respected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
from pathlib import Path

_BACKEND_ENV = ("MUJOCO_GL", "PYOPENGL_PLATFORM")


def _has_nvidia_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version")


def default_gl_backend() -> str:
    """Return ``"egl"`` where an NVIDIA GPU and libEGL exist, else ``"osmesa"``."""
    if _has_nvidia_gpu() and ctypes.util.find_library("EGL"):
        return "egl"
    return "osmesa"


def preload_triton() -> bool:
    """
    Load triton's native library now, before an OSMesa context exists.

    OSMesa's llvmpipe and triton (shipped with CUDA builds of torch, imported lazily by ``torch._dynamo`` at the
    first optimizer construction) both carry LLVM; loading triton after an OSMesa context was created segfaults the
    process. Loading the shared object first (no Python import, ~0.1 s) makes the later import safe.

    :return: whether a triton library was found and loaded
    """
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return False
    for location in spec.submodule_search_locations:
        for library in sorted((Path(location) / "_C").glob("libtriton*.so")):
            ctypes.CDLL(str(library))
            return True
    return False


def configure_gl_backend() -> str:
    """Set ``MUJOCO_GL`` and ``PYOPENGL_PLATFORM`` unless the user already did; return the backend in use."""
    backend = os.environ.get("MUJOCO_GL") or default_gl_backend()
    os.environ.setdefault("MUJOCO_GL", backend)
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    if backend == "osmesa":
        preload_triton()
    return backend


def gl_install_hint(backend: str) -> str:
    """How to install the system library a backend needs (Debian/Ubuntu package names)."""
    if backend == "osmesa":
        return "install it with `apt-get install -y libosmesa6` (software rendering, no GPU needed)"
    if backend == "egl":
        return (
            "install it with `apt-get install -y libegl1` and an NVIDIA driver, or use software rendering with "
            "`apt-get install -y libosmesa6` and MUJOCO_GL=osmesa"
        )
    return "set MUJOCO_GL=osmesa (software) or MUJOCO_GL=egl (GPU)"
