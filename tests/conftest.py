"""Shared test set-up: choose the GL backend before anything imports mujoco, keep runs small and repeatable."""

import pvrw  # noqa: F401  (sets MUJOCO_GL / PYOPENGL_PLATFORM before mujoco is imported)
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests use tiny networks: one intra-op thread avoids oversubscribing small CPUs (up to 10x faster on a busy
    2-core box). Set before every test, since a training run may change it."""
    torch.set_num_threads(1)


@pytest.fixture
def tmp_run_dir(tmp_path):
    """A fresh directory for a test's outputs."""
    d = tmp_path / "run"
    d.mkdir()
    return d
