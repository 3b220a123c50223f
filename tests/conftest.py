"""Shared test set-up: choose the GL backend before anything imports mujoco, keep runs small and repeatable."""

import pvrw  # noqa: F401  (sets MUJOCO_GL / PYOPENGL_PLATFORM before mujoco is imported)
import pytest
import torch

# Tests use tiny networks: one thread avoids oversubscribing small CPUs (up to 10x faster on a busy 2-core box).
torch.set_num_threads(1)


@pytest.fixture
def tmp_run_dir(tmp_path):
    """A fresh directory for a test's outputs."""
    d = tmp_path / "run"
    d.mkdir()
    return d
