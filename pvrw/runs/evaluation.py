"""Evaluation episodes with both success criteria, and evaluation videos.

Meta-World's official criterion is success at *any* step of the episode (``info["success"]``, which make_env keeps
true once reached); the stricter one is success at the episode's *final* step (``info["success_now"]`` on the last
step). Both are reported, always named.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np


class FrameRecorder(gym.Wrapper):
    """Keeps the latest RGB frame (H, W, 3 uint8) of a pixel env, for videos; passes everything through.

    Placed *under* a feature wrapper, it sees the pixels the agent never sees. The frame is the newest frame of a
    channel-first frame stack ``(3k, H, W)``, or ``env.render()`` when the observation is not an image.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.last_frame: np.ndarray | None = None
        self._render_failed = False

    def _grab(self, obs: Any) -> None:
        if isinstance(obs, np.ndarray) and obs.dtype == np.uint8 and obs.ndim == 3:
            if obs.shape[0] % 3 == 0 and obs.shape[0] < obs.shape[-1]:  # channel-first stack, newest last
                self.last_frame = np.ascontiguousarray(obs[-3:].transpose(1, 2, 0))
            else:
                self.last_frame = obs[..., -3:]
            return
        if self._render_failed:
            return
        try:
            frame = self.env.render()
        except Exception as err:  # noqa: BLE001 (an env that cannot render (missing pygame, no render_mode): no video)
            warnings.warn(f"no evaluation video: {type(err).__name__}: {err}", stacklevel=2)
            self._render_failed = True
            return
        self.last_frame = None if frame is None else np.asarray(frame)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._grab(obs)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._grab(obs)
        return obs, reward, terminated, truncated, info


def find_wrapper(env: gym.Env, cls: type) -> Any | None:
    """The first wrapper of type ``cls`` in ``env``'s wrapper chain, or ``None``."""
    while True:
        if isinstance(env, cls):
            return env
        if not hasattr(env, "env"):
            return None
        env = env.env


@dataclass
class EvalResult:
    """Mean and spread over evaluation episodes."""

    episodes: int
    reward: float
    reward_std: float
    length: float
    success: float | None
    """success at any step (rate over episodes); None when the env reports no success"""
    success_final: float | None
    """success at the final step (rate over episodes); None when the env reports no success"""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _success_flags(info: dict[str, Any]) -> tuple[float | None, float | None]:
    any_step = info.get("success", info.get("is_success"))
    final = info.get("success_now", any_step)
    return (None if any_step is None else float(any_step)), (None if final is None else float(final))


def evaluate(
    model: Any,
    env: gym.Env,
    n_episodes: int,
    deterministic: bool = True,
    video_path: str | os.PathLike | None = None,
    video_fps: int = 30,
    seed: int | None = None,
) -> EvalResult:
    """Run ``n_episodes`` episodes of ``model`` on the (non-vectorised) ``env``.

    :param model: anything with SB3's ``predict(obs, deterministic=...)``.
    :param seed: seed of the first reset, so that every evaluation sees the same tasks (with make_env's
        ``goal_mode="fixed"`` it restarts the cycle through the fixed configurations).
    :param video_path: if given, the first episode is written there as a video (needs a :class:`FrameRecorder`
        in the wrapper chain, or an env whose ``render()`` returns frames).
    """
    recorder = find_wrapper(env, FrameRecorder) if video_path else None
    if video_path is not None and recorder is None:
        env = recorder = FrameRecorder(env)  # grabs frames with env.render()
    rewards, lengths, successes, finals = [], [], [], []
    frames: list[np.ndarray] = []
    for episode in range(n_episodes):
        obs, info = env.reset(seed=seed) if episode == 0 and seed is not None else env.reset()
        done, total, length = False, 0.0, 0
        any_success: float | None = None
        final: float | None = None
        while not done:
            if episode == 0 and video_path is not None:
                frames.append(recorder.last_frame)
            action, _ = model.predict(obs, deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            length += 1
            step_any, final = _success_flags(info)
            if step_any is not None:
                any_success = max(any_success or 0.0, step_any)
            done = terminated or truncated
        if episode == 0 and video_path is not None:
            frames.append(recorder.last_frame)
        rewards.append(total)
        lengths.append(length)
        successes.append(any_success)
        finals.append(final)

    def rate(flags: list[float | None]) -> float | None:
        return None if any(f is None for f in flags) else float(np.mean(flags))

    frames = [f for f in frames if f is not None]
    if video_path is not None and frames:
        write_video(video_path, frames, fps=video_fps)
    return EvalResult(
        episodes=n_episodes,
        reward=float(np.mean(rewards)),
        reward_std=float(np.std(rewards)),
        length=float(np.mean(lengths)),
        success=rate(successes),
        success_final=rate(finals),
    )


def write_video(path: str | os.PathLike, frames: list[np.ndarray], fps: int = 30) -> None:
    """Write RGB frames to a video file (format from the suffix, e.g. .mp4 or .gif), atomically."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError(f"no frames to write to {path}: the env gave no RGB frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    kwargs: dict[str, Any] = {"fps": fps}
    if path.suffix == ".mp4":
        kwargs["macro_block_size"] = 1  # keep small frames (64x64) as they are instead of resizing them
    imageio.mimsave(tmp, [np.asarray(f, dtype=np.uint8) for f in frames], **kwargs)
    os.replace(tmp, path)
