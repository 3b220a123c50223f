"""DrM as a Stable-Baselines3 off-policy algorithm, for pixels and for frozen pretrained features."""

from pvrw.drm.dict_buffers import DrMDictReplayBuffer
from pvrw.drm.drm import VARIANT_DEFAULTS, DrM
from pvrw.drm.extractors import DrMCombinedExtractor
from pvrw.drm.parameters import trainable_parameter_counts
from pvrw.drm.policies import CnnPolicy, DrMPolicy, MlpPolicy, MultiInputPolicy, PiegPolicy
from pvrw.drm.schedules import LinearStepSchedule, parse_step_schedule

__all__ = [
    "VARIANT_DEFAULTS",
    "CnnPolicy",
    "DrM",
    "DrMCombinedExtractor",
    "DrMDictReplayBuffer",
    "DrMPolicy",
    "LinearStepSchedule",
    "MlpPolicy",
    "MultiInputPolicy",
    "PiegPolicy",
    "parse_step_schedule",
    "trainable_parameter_counts",
]
