"""glibc malloc kept for reuse during CPU training (:mod:`pvrw._malloc`, ``DrM(reuse_cpu_memory=)``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from test_drm_run import FAST, feature_env

from pvrw import _malloc

pytestmark = pytest.mark.skipif(_malloc._glibc() is None, reason="needs Linux with glibc")

PAGE_FAULTS = """
import resource, torch
from pvrw._malloc import keep_freed_memory, restore_default_malloc

def faults(n=8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.relu(torch.empty(64 * 2**20 // 4).fill_(1.0))  # 64 MiB blocks: above glibc's mmap threshold (<= 32 MiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

assert restore_default_malloc()
faults(1)
default = faults()
assert keep_freed_memory()
faults()  # the heap grows to the peak once
kept = faults()
print(default, kept)
"""


def test_freed_memory_is_reused_without_page_faults():
    """glibc's default maps each 64 MiB tensor afresh (the kernel faults its pages in again); kept, the heap's pages
    are reused."""
    out = subprocess.run([sys.executable, "-c", PAGE_FAULTS], capture_output=True, text=True, check=True).stdout
    default, kept = map(int, out.split())
    assert kept * 4 < default, (default, kept)


def test_drm_keeps_memory_on_the_cpu_unless_told_not_to(monkeypatch):
    import pvrw.drm.drm as drm_module

    calls = []
    monkeypatch.setattr(drm_module, "keep_freed_memory", lambda: calls.append(1) or True)
    drm_module.DrM("MlpPolicy", feature_env(), seed=0, device="cpu", **FAST).learn(40)
    assert calls
    calls.clear()
    model = drm_module.DrM("MlpPolicy", feature_env(), seed=0, device="cpu", reuse_cpu_memory=False, **FAST)
    model.learn(40)
    assert model._n_updates > 0 and not calls
