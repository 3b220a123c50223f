"""Runs: the run directory, its resolved config, metrics, checkpoints, evaluation, plots and sweeps.

The ``pvrw`` CLI is a thin layer over this package; a sweep backend (local queue, Ray) calls
:func:`run_training` on each run directory.
"""

from pvrw.runs.config import PRESETS, ConfigError, RunConfig, build_config, load_config, save_config
from pvrw.runs.layout import RunDir, RunDirError, RunStatus
from pvrw.runs.lock import RunLockedError, run_lock
from pvrw.runs.training import run_training

__all__ = [
    "PRESETS",
    "ConfigError",
    "RunConfig",
    "RunDir",
    "RunDirError",
    "RunLockedError",
    "RunStatus",
    "build_config",
    "load_config",
    "run_lock",
    "run_training",
    "save_config",
]
