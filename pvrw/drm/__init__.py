"""DrM as a Stable-Baselines3 off-policy algorithm, for pixels and for frozen pretrained features."""

try:
    # torch imports its compiler stack (triton) lazily at the first optimizer construction; importing it after MuJoCo
    # has loaded OSMesa segfaults (both bundle LLVM). Importing pvrw.drm before creating envs is then safe.
    import torch._dynamo  # noqa: F401
except Exception:  # no compiler stack on this install: nothing to order
    pass

from pvrw.drm.drm import VARIANT_DEFAULTS, DrM
from pvrw.drm.parameters import trainable_parameter_counts
from pvrw.drm.policies import CnnPolicy, DrMPolicy, MlpPolicy, PiegPolicy
from pvrw.drm.schedules import LinearStepSchedule, parse_step_schedule

__all__ = [
    "VARIANT_DEFAULTS",
    "CnnPolicy",
    "DrM",
    "DrMPolicy",
    "LinearStepSchedule",
    "MlpPolicy",
    "PiegPolicy",
    "parse_step_schedule",
    "trainable_parameter_counts",
]
