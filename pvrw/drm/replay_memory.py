"""Replay memory per transition: :class:`~pvrw.drm.buffers.DrMReplayBuffer` beside SB3's buffer and the reference's.

Every figure is measured on arrays actually allocated by the three layouts (``nbytes``), at a small capacity, then
scaled to ``buffer_size`` transitions:

- this buffer: filled with episodes of ``episode_length`` steps until it wraps; bytes of all its arrays divided by
  the number of transitions it then holds (frames of the episodes' first stacks and the frame slack included);
- SB3's ``ReplayBuffer`` (``NStepReplayBuffer`` for ``n_steps > 1``: the same arrays): ``obs`` and ``next_obs``
  stacked, action, reward, done, timeout; preallocated, so its ``nbytes`` is the same filled or empty;
- the DrQ-v2/DrM reference (``replay_buffer.py``): per episode, ``episode_length + 1`` entries (one dummy first
  entry) of stacked observation, float32 action, float32 reward and float32 discount, divided by
  ``episode_length`` transitions. The reference keeps observations in their own dtype (no float16 option).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer

from pvrw.drm.buffers import DrMReplayBuffer

# Meta-World episodes: 250 agent steps (reference TimeLimit, pvrw make_env default)
DEFAULT_EPISODE_LENGTH = 250


@dataclass(frozen=True)
class ReplayMemoryReport:
    """Bytes per transition of three replay layouts for one observation space."""

    label: str
    observation_shape: tuple[int, ...]
    observation_dtype: str
    storage_dtype: str
    frame_stack: int
    n_steps: int
    episode_length: int
    buffer_size: int
    drm_bytes_per_transition: float
    sb3_bytes_per_transition: float
    reference_bytes_per_transition: float

    @property
    def drm_total_bytes(self) -> float:
        """:return: bytes of a DrMReplayBuffer holding ``buffer_size`` transitions"""
        return self.drm_bytes_per_transition * self.buffer_size

    @property
    def sb3_total_bytes(self) -> float:
        """:return: bytes of SB3's buffer with ``buffer_size`` transitions"""
        return self.sb3_bytes_per_transition * self.buffer_size

    @property
    def reference_total_bytes(self) -> float:
        """:return: bytes of the reference's storage for ``buffer_size`` transitions"""
        return self.reference_bytes_per_transition * self.buffer_size

    def as_dict(self) -> dict:
        """:return: the fields and totals as a plain dict (for CSV/JSON output)"""
        row = asdict(self)
        row.update(
            drm_total_bytes=self.drm_total_bytes,
            sb3_total_bytes=self.sb3_total_bytes,
            reference_total_bytes=self.reference_total_bytes,
        )
        return row


def storage_needs(report: ReplayMemoryReport, checkpoint_interval: int = 50_000) -> dict[str, dict[str, float]]:
    """
    RAM and disk a full :class:`DrMReplayBuffer` of ``report.buffer_size`` transitions needs with each storage.

    - ``memory``: the arrays in RAM; on disk, a run checkpoint's pickle of them, twice while a checkpoint is written
      (the previous one is kept until the new one is complete).
    - ``disk``: the files; plus the undo journals of the two checkpoints the storage keeps once the ring wraps (the
      old content of the rows overwritten in two intervals of ``checkpoint_interval`` transitions). No RAM is needed
      for the buffer: the page cache holds what sampling touches and the kernel takes it back under pressure.

    :param report: a measured report
    :param checkpoint_interval: transitions between two run checkpoints (runs: ``checkpoint_every`` frames / action
        repeat; the study's: 100,000 / 2)
    :return: ``{"memory": {"ram": bytes, "disk": bytes}, "disk": {"ram": bytes, "disk": bytes}}``
    """
    total = report.drm_total_bytes
    journals = 2 * min(checkpoint_interval, report.buffer_size) * report.drm_bytes_per_transition
    return {"memory": {"ram": total, "disk": 2 * total}, "disk": {"ram": 0.0, "disk": total + journals}}


def _drm_bytes_per_transition(buffer: DrMReplayBuffer, episode_length: int) -> float:
    """Fill ``buffer`` with constant episodes until both rings wrapped; return nbytes / transitions held."""
    obs = np.zeros((buffer.n_envs, *buffer.obs_shape), dtype=buffer.observation_space.dtype)
    action = np.zeros((buffer.n_envs, buffer.action_dim), dtype=np.float32)
    reward = np.zeros(buffer.n_envs, dtype=np.float32)
    # whole episodes, past the point where both rings have wrapped
    n_episodes = -(-(max(buffer.buffer_size, buffer.frame_capacity) + episode_length) // episode_length)
    for step in range(n_episodes * episode_length):
        end = (step + 1) % episode_length == 0
        infos = [{"TimeLimit.truncated": end} for _ in range(buffer.n_envs)]
        buffer.add(obs, obs, action, reward, np.full(buffer.n_envs, end), infos)
    newest = buffer.obs_frame
    held = (newest >= 0) & (newest - buffer.frame_stack + 1 >= buffer.frames_written - buffer.frame_capacity)
    return buffer.nbytes() / int(held.sum())


def _reference_bytes_per_transition(observation_space: spaces.Box, action_dim: int, episode_length: int) -> float:
    entries = episode_length + 1  # DrQ-v2 stores the reset time step as a dummy first entry
    episode = {
        "observation": np.zeros((entries, *observation_space.shape), dtype=observation_space.dtype),
        "action": np.zeros((entries, action_dim), dtype=np.float32),
        "reward": np.zeros((entries, 1), dtype=np.float32),
        "discount": np.zeros((entries, 1), dtype=np.float32),
    }
    return sum(array.nbytes for array in episode.values()) / episode_length


def replay_memory_report(
    observation_space: spaces.Box,
    action_space: spaces.Box,
    n_steps: int = 3,
    buffer_size: int = 1_000_000,
    *,
    frame_stack: int | None = None,
    storage_dtype: np.typing.DTypeLike | None = None,
    episode_length: int = DEFAULT_EPISODE_LENGTH,
    measure_capacity: int | None = None,
    label: str = "",
) -> ReplayMemoryReport:
    """
    Measure bytes per transition of :class:`DrMReplayBuffer`, SB3's replay buffer and the reference's storage.

    :param observation_space: observation space (stacked, as the algorithm sees it)
    :param action_space: action space
    :param n_steps: n-step return length (does not change the storage, recorded for the table)
    :param buffer_size: transitions the totals are scaled to
    :param frame_stack: frames per observation, ``None`` to infer (see :func:`~pvrw.drm.buffers.infer_frame_stack`)
    :param storage_dtype: DrMReplayBuffer storage dtype (e.g. ``np.float16`` for embeddings)
    :param episode_length: length of the episodes the buffers are filled with
    :param measure_capacity: capacity of the buffers actually allocated; default ``2 * episode_length``
    :param label: name of the row
    :return: the measured report
    """
    capacity = measure_capacity or 2 * episode_length
    drm_buffer = DrMReplayBuffer(
        capacity, observation_space, action_space, "cpu", n_steps=n_steps, frame_stack=frame_stack, storage_dtype=storage_dtype
    )
    drm_bytes = _drm_bytes_per_transition(drm_buffer, episode_length)

    sb3_class = NStepReplayBuffer if n_steps > 1 else ReplayBuffer
    sb3_kwargs = {"n_steps": n_steps} if n_steps > 1 else {}
    sb3_buffer = sb3_class(capacity, observation_space, action_space, "cpu", **sb3_kwargs)
    arrays = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
    sb3_bytes = sum(getattr(sb3_buffer, name).nbytes for name in arrays) / sb3_buffer.buffer_size

    return ReplayMemoryReport(
        label=label,
        observation_shape=tuple(observation_space.shape),
        observation_dtype=str(observation_space.dtype),
        storage_dtype=str(drm_buffer.storage_dtype),
        frame_stack=drm_buffer.frame_stack,
        n_steps=n_steps,
        episode_length=episode_length,
        buffer_size=buffer_size,
        drm_bytes_per_transition=drm_bytes,
        sb3_bytes_per_transition=sb3_bytes,
        reference_bytes_per_transition=_reference_bytes_per_transition(
            observation_space, drm_buffer.action_dim, episode_length
        ),
    )


def study_observation_spaces(frame_stack: int = 3) -> dict[str, tuple[spaces.Box, np.dtype | None]]:
    """
    The observation spaces of the study: pixels at 84/112/224 and each PVR's per-frame output (resnet18: PIE-G
    spatial map; dinov2, vc1: CLS 768; dinov2_reg: CLS + 4 registers 3840), stacked ``frame_stack`` times.

    :param frame_stack: frames per observation
    :return: label -> (observation space, DrMReplayBuffer storage dtype)
    """
    cases: dict[str, tuple[spaces.Box, np.dtype | None]] = {}
    for resolution in (84, 112, 224):
        cases[f"pixels {resolution}"] = (spaces.Box(0, 255, (3 * frame_stack, resolution, resolution), np.uint8), None)
    features = {
        "resnet18 @112": (128, 14, 14),
        "resnet18 @224": (128, 28, 28),
        "dinov2": (768,),
        "dinov2_reg": (3840,),
        "vc1": (768,),
    }
    for name, shape in features.items():
        space = spaces.Box(-np.inf, np.inf, (frame_stack, *shape), np.float32)
        cases[f"{name} fp32"] = (space, None)
        cases[f"{name} fp16"] = (space, np.dtype(np.float16))
    return cases


def study_memory_table(
    buffer_size: int = 1_000_000, n_steps: int = 3, action_dim: int = 4, episode_length: int = DEFAULT_EPISODE_LENGTH
) -> list[ReplayMemoryReport]:
    """
    :param buffer_size: transitions the totals are scaled to
    :param n_steps: n-step return length
    :param action_dim: action dimension (Meta-World: 4)
    :param episode_length: episode length the buffers are filled with
    :return: one measured report per study observation space
    """
    action_space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
    return [
        replay_memory_report(
            space, action_space, n_steps, buffer_size, storage_dtype=dtype, episode_length=episode_length, label=label
        )
        for label, (space, dtype) in study_observation_spaces().items()
    ]


def format_memory_table(reports: list[ReplayMemoryReport]) -> str:
    """
    :param reports: measured reports
    :return: a plain-text table: bytes per transition, ratios and totals at each report's ``buffer_size``
    """
    header = (
        f"{'observation':<18}{'shape':>16}{'stored':>9}{'DrM B/tr':>12}{'SB3 B/tr':>12}{'ref B/tr':>12}"
        f"{'SB3/DrM':>9}{'ref/DrM':>9}{'DrM GB':>9}{'SB3 GB':>9}{'ref GB':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        lines.append(
            f"{r.label:<18}{'x'.join(map(str, r.observation_shape)):>16}{r.storage_dtype:>9}"
            f"{r.drm_bytes_per_transition:>12,.0f}{r.sb3_bytes_per_transition:>12,.0f}"
            f"{r.reference_bytes_per_transition:>12,.0f}"
            f"{r.sb3_bytes_per_transition / r.drm_bytes_per_transition:>9.2f}"
            f"{r.reference_bytes_per_transition / r.drm_bytes_per_transition:>9.2f}"
            f"{r.drm_total_bytes / 1e9:>9.2f}{r.sb3_total_bytes / 1e9:>9.2f}{r.reference_total_bytes / 1e9:>9.2f}"
        )
    if reports:
        r = reports[0]
        lines.append(
            f"(GB at {r.buffer_size:,} transitions; buffers filled with {r.episode_length}-step episodes, "
            f"n_steps={r.n_steps}; reference = DrQ-v2/DrM per-step stacked storage incl. one dummy entry per episode)"
        )
    return "\n".join(lines)
