"""glibc's malloc, told to keep freed memory for reuse during CPU training.

PyTorch's CPU allocator has no cache: every tensor is a ``malloc`` and every release a ``free``. glibc serves a block
above its mmap threshold (128 KiB, raised on the fly to at most 32 MiB) with a fresh ``mmap`` and unmaps it on
``free``, so each large activation of an update (a DrQ-v2 conv map at batch 256 and 84 px is 55 MB) is new memory the
kernel zero-fills page by page on first touch. On the 2-core CPU this project is developed on, that page-faulting was
about 40% of a pixel update. :func:`keep_freed_memory` switches glibc to serving every block from its heap and not
trimming it, so the pages of one update are reused by the next. It changes no value computed; the cost is that the
process keeps its peak heap until it exits (as the caching allocators of PyTorch on CUDA, jemalloc or tcmalloc do).

Both functions are process-wide and no-ops (returning False) where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters, glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

# glibc's steady state under its dynamic rule, after large blocks have been freed: the mmap threshold at its 32 MiB
# ceiling (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit), the trim threshold twice that, mmap allowed (DEFAULT_MMAP_MAX)
_DEFAULT_MMAP_THRESHOLD = 32 * 1024 * 1024
_DEFAULT_TRIM_THRESHOLD = 2 * _DEFAULT_MMAP_THRESHOLD
_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = 2**31 - 1  # mallopt takes a C int

_kept = False


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no such symbol)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """
    Serve every allocation from glibc's heap (no per-block ``mmap``) and never trim the heap, so that freed tensors'
    pages are reused. Idempotent and cheap after the first call.

    :return: whether glibc's settings are (now) in place; False where the C library is not glibc
    """
    global _kept
    if _kept:
        return True
    libc = _glibc()
    if libc is None:
        return False
    _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return _kept


def restore_default_malloc() -> bool:
    """
    Undo :func:`keep_freed_memory`: glibc's settings as its dynamic rule leaves them once large blocks have come and
    gone (mmap above 32 MiB, trim above 64 MiB). Benchmarks call it before timing code that runs with the defaults.

    :return: whether the settings were applied; False where the C library is not glibc
    """
    global _kept
    libc = _glibc()
    if libc is None:
        return False
    _kept = False
    return all(
        libc.mallopt(param, value)
        for param, value in (
            (_M_MMAP_MAX, _DEFAULT_MMAP_MAX),
            (_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD),
        )
    )
