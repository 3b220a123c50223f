"""Full disks and cut-off files: one-line errors, nothing committed lost, no crash, no hang (all in subprocesses)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_feature_cache import spec

from pvrw.feature_cache import FeatureStore

PVRW = [sys.executable, "-c", "from pvrw.cli import main; main()"]


def run_pvrw(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``pvrw ARGS`` in a subprocess (a crash is an exit code, a hang a TimeoutExpired, not a dead pytest)."""
    return subprocess.run([*PVRW, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)


def assert_one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> str:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------- cut-off feature files (case 5)


@pytest.mark.parametrize("size", [0, 512, 2048])
def test_cache_info_and_repair_refuse_a_cut_off_file_at_once(tmp_path, size):
    """HDF5's SWMR read-open skips the end-of-file check and retried a cut file's metadata for many minutes."""
    good = tmp_path / "good.h5"
    with FeatureStore(good, "a") as store:
        store.require_set(spec()).append(np.ones((50, 6, 5), np.float32))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:size])
    for command in ("info", "repair"):
        line = assert_one_line_error(run_pvrw("cache", command, cut, timeout=120), str(cut))
        if size:
            assert f"is truncated: it has {size} of the {good.stat().st_size} bytes" in line
    assert cut.stat().st_size == size  # repair refused it: left as it was
