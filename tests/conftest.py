"""Shared test set-up: choose the GL backend before anything imports mujoco, keep runs small and repeatable."""

import pvrw  # noqa: F401  (sets MUJOCO_GL / PYOPENGL_PLATFORM before mujoco is imported)
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tmp_run_dir(tmp_path):
    """A fresh directory for a test's outputs."""
    d = tmp_path / "run"
    d.mkdir()
    return d
