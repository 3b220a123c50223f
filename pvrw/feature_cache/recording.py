"""Episode datasets: frames, actions, rewards, dones and success recorded from any policy into one HDF5 file.

Layout of a ``pvrw.episodes`` file (episode ``e`` has ``T`` steps and ``T + 1`` frames: the reset frame, then one
frame after each step, as in Minari)::

    /                       attrs: env_id, policy, resolution, frame_shape, action_dim, dataset_uuid, created
    frames                  (F, 3, H, W) uint8, newest frame of each observation, channel-first
    actions                 (S, A) float32
    rewards                 (S,) float32
    terminated, truncated   (S,) bool
    success                 (S,) bool, info["success"] after the step (task solved at any step so far)
    episode_frame_start, episode_step_start, episode_num_steps, episode_seed   (E,) int64
    episode_return (E,) float64, episode_success (E,) bool
    committed               (3,) int64: frames, steps, episodes that readers may trust

Whole episodes are appended and committed at once, so a killed recording keeps every finished episode.
"""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from pvrw.feature_cache import _h5
from pvrw.feature_cache._h5 import FeatureCacheError, Table
from pvrw.feature_cache._space import FullDiskGuard

logger = logging.getLogger(__name__)

FORMAT = "pvrw.episodes"
FRAMES, STEPS, EPISODES = 0, 1, 2
_STEP_COLUMNS = {"actions": np.float32, "rewards": np.float32, "terminated": bool, "truncated": bool, "success": bool}
_EPISODE_COLUMNS = {
    "episode_frame_start": np.int64,
    "episode_step_start": np.int64,
    "episode_num_steps": np.int64,
    "episode_seed": np.int64,
    "episode_return": np.float64,
    "episode_success": bool,
}

Policy = Callable[[Any], np.ndarray]


def frame_of(observation: Any, env: gym.Env | None = None) -> np.ndarray:
    """The newest RGB frame (3,H,W) uint8 of an observation: last 3 channels of a (3k,H,W) stack, or an (H,W,3)
    image; other observations fall back to ``env.render()``."""
    obs = np.asarray(observation) if isinstance(observation, np.ndarray) else None
    if obs is not None and obs.dtype == np.uint8 and obs.ndim == 3:
        if obs.shape[0] % 3 == 0 and obs.shape[-1] != 3:
            return np.ascontiguousarray(obs[-3:])
        if obs.shape[-1] == 3:
            return np.ascontiguousarray(obs.transpose(2, 0, 1))
    if env is None:
        raise ValueError(f"cannot find an RGB frame in an observation of shape {getattr(obs, 'shape', None)}")
    image = np.asarray(env.render())
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"env.render() returned {image.shape}; recording needs RGB frames (render_mode='rgb_array')")
    return np.ascontiguousarray(image.transpose(2, 0, 1).astype(np.uint8))


class EpisodeWriter:
    """Appends whole episodes to a ``pvrw.episodes`` file (created if missing; an existing one must match)."""

    def __init__(self, path: str | os.PathLike, frame_shape: tuple[int, int, int], action_dim: int, **attrs: Any):
        self.path = os.fspath(path)
        self.frame_shape = tuple(int(d) for d in frame_shape)
        self.action_dim = int(action_dim)
        self._guard = FullDiskGuard(self.path)  # a full disk: one error, the file closed with its episodes kept
        self._file = _h5.open_for_writing(self.path, FORMAT, {"dataset_uuid": uuid.uuid4().hex})
        try:
            with self._guard.writing(lambda: self._file, "the dataset's tables"):
                self._setup(attrs)
                _h5.start_swmr(self._file)
        except Exception:
            self._guard.close(self._file)
            raise
        self._table = Table(self._file)

    def _setup(self, attrs: dict[str, Any]) -> None:
        f = self._file
        if _h5.COUNTER in f:
            have_shape = tuple(int(d) for d in f["frames"].shape[1:])
            have_adim = int(f["actions"].shape[1])
            if have_shape != self.frame_shape or have_adim != self.action_dim:
                raise FeatureCacheError(
                    f"{self.path} holds frames {have_shape} and {have_adim}-d actions; cannot append frames"
                    f" {self.frame_shape} with {self.action_dim}-d actions. Record into a new file."
                )
            return
        table = Table.create(f, n_slots=3)
        table.create_column("frames", self.frame_shape, np.uint8, FRAMES, chunk_bytes=1 << 18)
        for name, dtype in _STEP_COLUMNS.items():
            shape = (self.action_dim,) if name == "actions" else ()
            table.create_column(name, shape, dtype, STEPS, chunk_bytes=1 << 16)
        for name, dtype in _EPISODE_COLUMNS.items():
            table.create_column(name, (), dtype, EPISODES, compression=None, chunk_rows=1024)
        f.attrs["frame_shape"] = np.asarray(self.frame_shape, dtype=np.int64)
        f.attrs["action_dim"] = self.action_dim
        f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for key, value in attrs.items():
            f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else _h5.json_attr(value)

    def add_episode(
        self,
        frames: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        success: np.ndarray,
        seed: int = -1,
    ) -> int:
        """Append one episode (``T + 1`` frames, ``T`` steps) and commit it; returns the number of episodes."""
        frames = np.asarray(frames, dtype=np.uint8)
        steps = len(actions)
        if frames.shape != (steps + 1, *self.frame_shape):
            raise ValueError(
                f"an episode of {steps} steps needs frames {(steps + 1, *self.frame_shape)}, got {frames.shape}"
            )
        n_frames, n_steps, n_episodes = (int(c) for c in self._table.counts())
        columns = {
            "actions": np.asarray(actions, np.float32).reshape(steps, self.action_dim),
            "rewards": rewards,
            "terminated": terminated,
            "truncated": truncated,
            "success": success,
        }
        episode = {
            "episode_frame_start": n_frames,
            "episode_step_start": n_steps,
            "episode_num_steps": steps,
            "episode_seed": seed,
            "episode_return": float(np.sum(rewards, dtype=np.float64)),
            "episode_success": bool(np.any(success)),
        }
        with self._guard.writing(lambda: self._file, f"episode {n_episodes} ({steps} steps)", frames.nbytes):
            frame_end = self._table.append("frames", frames, n_frames)
            for name, values in columns.items():
                step_end = self._table.append(name, np.asarray(values, dtype=_STEP_COLUMNS[name]), n_steps)
            for name, value in episode.items():
                self._table.append(name, np.asarray([value], dtype=_EPISODE_COLUMNS[name]), n_episodes)
            self._table.commit([frame_end, step_end, n_episodes + 1])
        return n_episodes + 1

    def close(self) -> None:
        self._guard.close(self._file)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class EpisodeDataset:
    """Reads a ``pvrw.episodes`` file (SWMR: works while it is being recorded; call :meth:`refresh` to follow)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._file = _h5.open_for_reading(self.path, FORMAT)
        if _h5.COUNTER not in self._file:
            self._file.close()
            raise FeatureCacheError(f"{self.path} is an empty episode dataset (no episode was ever committed)")
        self._table = Table(self._file)
        self._frames = self._file["frames"]
        self._counts = self._table.counts()
        self._num_frames = self._committed_frames()

    def refresh(self) -> None:
        """Follow a recording in progress: see the episodes committed since opening."""
        for ds in self._table.columns():
            ds.refresh()
        self._counts = self._table.counts(refresh=True)
        self._num_frames = self._committed_frames()

    def _committed_frames(self) -> int:
        n = self.num_episodes
        if n == 0:
            return 0
        return int(self._file["episode_frame_start"][n - 1] + self._file["episode_num_steps"][n - 1] + 1)

    @property
    def uuid(self) -> str:
        return _h5.str_attr(self._file, "dataset_uuid")

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self._file.attrs.items()}

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._file["frames"].shape[1:])

    @property
    def num_episodes(self) -> int:
        return int(self._counts[EPISODES])

    @property
    def num_steps(self) -> int:
        """Steps of committed episodes."""
        n = self.num_episodes
        if n == 0:
            return 0
        return int(self._file["episode_step_start"][n - 1] + self._file["episode_num_steps"][n - 1])

    @property
    def num_frames(self) -> int:
        """Frames of committed episodes (frames past the last committed episode are not trusted)."""
        return self._num_frames

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.num_frames if stop is None else stop
        if not 0 <= start <= stop <= self.num_frames:
            raise IndexError(
                f"frames [{start}, {stop}) out of range: {self.path} has {self.num_frames} committed frames"
            )
        return self._frames[start:stop]

    def episode_table(self) -> dict[str, np.ndarray]:
        """Per-episode columns (frame_start, step_start, num_steps, seed, return, success) of committed episodes."""
        n = self.num_episodes
        return {name.removeprefix("episode_"): self._file[name][:n] for name in _EPISODE_COLUMNS}

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """Episode ``index``: ``frames`` (T+1,3,H,W) and the step columns (T,...)."""
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range: {self.path} has {self.num_episodes} episodes")
        f0 = int(self._file["episode_frame_start"][index])
        s0 = int(self._file["episode_step_start"][index])
        t = int(self._file["episode_num_steps"][index])
        out = {"frames": self._file["frames"][f0 : f0 + t + 1]}
        for name in _STEP_COLUMNS:
            out[name] = self._file[name][s0 : s0 + t]
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EpisodeDataset:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_policy(policy: str, env: gym.Env, seed: int = 0, model: Any = None) -> Policy:
    """A callable ``obs -> action``: ``"random"`` (seeded uniform), ``"expert"`` (Meta-World scripted expert),
    or ``"model"`` (``model.predict(obs, deterministic=True)`` of a loaded SB3 model)."""
    if policy == "random":
        space = env.action_space
        space.seed(seed)
        return lambda _obs: space.sample()
    if policy == "expert":
        from pvrw.envs.metaworld import scripted_expert

        return scripted_expert(env)
    if policy == "model":
        if model is None:
            raise ValueError("policy='model' needs model=")
        return lambda obs: model.predict(obs, deterministic=True)[0]
    raise ValueError(f"unknown policy {policy!r}: use 'random', 'expert' or a model")


def record_episodes(
    env: gym.Env,
    policy: Policy,
    episodes: int,
    out: str | os.PathLike,
    seed: int = 0,
    progress: bool = False,
    attrs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``episodes`` episodes of ``policy`` in ``env`` (episode ``e`` reset with ``seed + e``) and append them to
    ``out``. Frames are the newest RGB frame of each observation (or ``env.render()``).

    :param attrs: file attributes stored when ``out`` is created (env_id, policy, ...).
    :returns: path, episodes, mean_return and success_rate of the episodes recorded by this call.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    action_dim = int(np.prod(env.action_space.shape))
    writer: EpisodeWriter | None = None
    returns, successes = [], []
    try:
        iterator = range(episodes)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="record", unit="episode")
        for e in iterator:
            obs, _ = env.reset(seed=seed + e)
            frames = [frame_of(obs, env)]
            actions, rewards, terminated, truncated, success = [], [], [], [], []
            done = False
            while not done:
                action = np.asarray(policy(obs), dtype=np.float32)
                obs, reward, term, trunc, info = env.step(action)
                frames.append(frame_of(obs, env))
                actions.append(action.reshape(action_dim))
                rewards.append(float(reward))
                terminated.append(bool(term))
                truncated.append(bool(trunc))
                success.append(bool(info.get("success", info.get("is_success", False))))
                done = term or trunc
            if writer is None:
                writer = EpisodeWriter(out, frames[0].shape, action_dim, **(attrs or {}))
            writer.add_episode(np.stack(frames), np.stack(actions), rewards, terminated, truncated, success, seed + e)
            returns.append(sum(rewards))
            successes.append(any(success))
    finally:
        if writer is not None:
            writer.close()
    return {
        "path": os.fspath(out),
        "episodes": episodes,
        "mean_return": float(np.mean(returns)),
        "success_rate": float(np.mean(successes)),
    }
