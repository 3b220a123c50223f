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
from types import ModuleType

_BACKEND_ENV = ("MUJOCO_GL", "PYOPENGL_PLATFORM")
#: the headless MUJOCO_GL values on Linux, with what each needs
GL_CHOICES = "osmesa (software, libosmesa6), egl (GPU, libegl1 + an NVIDIA driver), glfw (a display)"
# what mujoco.gl_context accepts on Linux (it raises a bare RuntimeError on anything else)
_MUJOCO_GL_VALUES = ("", "glfw", "glx", "egl", "osmesa", "enable", "enabled", "on", "true", "1",
                     "disable", "disabled", "off", "false", "0")
_LIBRARIES = {"osmesa": "libOSMesa", "egl": "libEGL"}


class GLBackendError(ImportError):
    """MuJoCo's OpenGL backend cannot be used: a bad ``MUJOCO_GL`` / ``PYOPENGL_PLATFORM`` or a missing library."""


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


def check_gl_environment() -> None:
    """Refuse ``MUJOCO_GL`` / ``PYOPENGL_PLATFORM`` values that MuJoCo or PyOpenGL would reject at import.

    :raises GLBackendError: one line naming the variable, its value and the choices.
    """
    mujoco_gl = os.environ.get("MUJOCO_GL", "")
    backend = mujoco_gl.lower().strip()
    if backend not in _MUJOCO_GL_VALUES:
        raise GLBackendError(f"MUJOCO_GL={mujoco_gl!r} is not a MuJoCo rendering backend; use {GL_CHOICES}, or "
                             "unset it (pvrw then picks egl on an NVIDIA GPU, else osmesa).")
    platform = os.environ.get("PYOPENGL_PLATFORM", "")
    if backend in _LIBRARIES and platform and platform.lower().strip() != backend:
        raise GLBackendError(f"PYOPENGL_PLATFORM={platform!r} contradicts MUJOCO_GL={mujoco_gl!r}: set both to "
                             f"{backend!r}, or unset PYOPENGL_PLATFORM (pvrw sets it to match MUJOCO_GL).")


def _from_gl_import(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while mujoco set up its GL context (mujoco.gl_context, its backends, PyOpenGL)."""
    while exc is not None:
        tb = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename.replace("\\", "/")
            if "/mujoco/gl_context" in filename or "/mujoco/osmesa" in filename or "/mujoco/egl" in filename \
                    or "/OpenGL/" in filename:
                return True
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return False


def import_mujoco() -> ModuleType:
    """Choose the GL backend (:func:`configure_gl_backend`), check it, and import ``mujoco``.

    :raises GLBackendError: a bad ``MUJOCO_GL`` / ``PYOPENGL_PLATFORM`` value, or a GL library that cannot be
        loaded (one line: the library, the install command, the ``MUJOCO_GL`` choices). An ``ImportError``, so that
        ``from pvrw import make_env`` reports it instead of "cannot import name".
    """
    backend = configure_gl_backend()
    check_gl_environment()
    try:
        import mujoco
    except Exception as exc:
        if isinstance(exc, GLBackendError) or not _from_gl_import(exc):
            raise
        library = _LIBRARIES.get(backend, f"the OpenGL library of MUJOCO_GL={backend!r}")
        raise GLBackendError(
            f"MuJoCo cannot render with MUJOCO_GL={backend!r}: {library} could not be loaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {gl_install_hint(backend)}. "
            f"MUJOCO_GL choices: {GL_CHOICES}."
        ) from exc
    return mujoco


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
