"""The SB3 callback that turns ``model.learn`` into a run: metrics rows, periodic evaluation, checkpoints, progress.

One callback rather than four, because their order matters for resuming: at a step where both are due, the
evaluation row is written before the checkpoint, so the checkpoint's ``metrics.csv`` prefix holds it. A due
checkpoint waits for the end of the training episode (a simulator's mid-episode state cannot be saved; at an episode
boundary the random state is all there is, see :mod:`pvrw.runs.rng_state`), at most ``checkpoint_every`` frames.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from pvrw.runs.checkpoint import CheckpointInfo, save_checkpoint
from pvrw.runs.evaluation import EvalResult, evaluate
from pvrw.runs.faults import kill_point
from pvrw.runs.layout import RUNNING, RunDir, RunStatus
from pvrw.runs.metrics import MetricsWriter
from pvrw.runs.rng_state import at_episode_start, capture_run_state, records_resets

# where an algorithm may expose the actor's dormant ratio, first found wins
_DORMANT_ATTRS = ("dormant_ratio", "actor_dormant_ratio")
_DORMANT_LOG_KEYS = ("train/actor_dormant_ratio", "train/dormant_ratio")


def dormant_ratio(model: Any) -> float | None:
    """The algorithm's latest actor dormant ratio, or ``None`` if it has none (SAC, TD3)."""
    for attr in _DORMANT_ATTRS:
        value = getattr(model, attr, None)
        if value is not None and not callable(value):
            return float(value)
    logger = getattr(model, "_logger", None)
    values = getattr(logger, "name_to_value", {}) if logger is not None else {}
    for key in _DORMANT_LOG_KEYS:
        if key in values:
            return float(values[key])
    return None


class RunCallback(BaseCallback):
    """Writes ``metrics.csv`` rows, evaluates and checkpoints on a frame schedule, and shows a progress bar.

    :param run_dir: the run directory.
    :param writer: the open metrics writer.
    :param frames_per_step: environment frames per agent step (the action repeat).
    :param total_frames: the run's budget (for the progress bar and the status file).
    :param eval_env: a single (non-vector) env for evaluation, or ``None`` to never evaluate during training.
    :param eval_every: frames between evaluations (0: none during training).
    :param eval_episodes: episodes per evaluation.
    :param video: record the first episode of each evaluation under ``videos/``.
    :param checkpoint_every: frames between checkpoints (0: none during training).
    :param save_replay_buffer: include the replay buffer in checkpoints.
    :param status: the run's status, updated at each checkpoint.
    :param episodes: training episodes finished before this ``learn`` call (resume).
    :param wall_time: seconds of training before this ``learn`` call (resume).
    :param resumed_from: the checkpoint this ``learn`` call resumes from (its evaluation is not repeated).
    :param progress: show a tqdm progress bar.
    :param eval_seed: seed of each evaluation's first reset (every evaluation then sees the same tasks).
    """

    def __init__(
        self,
        run_dir: RunDir,
        writer: MetricsWriter,
        frames_per_step: int,
        total_frames: int,
        status: RunStatus,
        eval_env: Any = None,
        eval_every: int = 0,
        eval_episodes: int = 10,
        video: bool = False,
        checkpoint_every: int = 0,
        save_replay_buffer: bool = True,
        episodes: int = 0,
        wall_time: float = 0.0,
        progress: bool = True,
        eval_seed: int | None = None,
        resumed_from: CheckpointInfo | None = None,
    ):
        super().__init__()
        self.eval_seed = eval_seed
        self.run_dir, self.writer, self.status = run_dir, writer, status
        self.frames_per_step, self.total_frames = frames_per_step, total_frames
        self.eval_env, self.eval_every, self.eval_episodes, self.video = eval_env, eval_every, eval_episodes, video
        self.checkpoint_every, self.save_replay_buffer = checkpoint_every, save_replay_buffer
        self.episodes, self._wall_offset, self.progress = episodes, wall_time, progress
        self._start = time.time()
        self._bar: Any = None
        self.last_eval: EvalResult | None = None
        self.last_eval_frames: int | None = None if resumed_from is None else resumed_from.last_eval_frames
        self.last_checkpoint: CheckpointInfo | None = resumed_from
        self._last_reward: float | None = None
        self._last_success: float | None = None

    # -- helpers ------------------------------------------------------------------------------------------
    @property
    def frames(self) -> int:
        return int(self.model.num_timesteps * self.frames_per_step)

    @property
    def wall_time(self) -> float:
        return self._wall_offset + time.time() - self._start

    @staticmethod
    def _next_multiple(frames: int, every: int) -> float:
        return math.inf if every <= 0 else (frames // every + 1) * every

    # -- SB3 hooks ------------------------------------------------------------------------------------------
    def _on_training_start(self) -> None:
        self._start = time.time()
        self._next_eval = self._next_multiple(self.frames, self.eval_every)
        self._next_checkpoint = self._next_multiple(self.frames, self.checkpoint_every)
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_frames, initial=self.frames, unit="frame", dynamic_ncols=True)

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", [])
        dones = np.atleast_1d(self.locals.get("dones", np.zeros(len(infos), dtype=bool)))
        for done, info in zip(dones, infos):
            if done:
                self._log_episode(info)
        if self._bar is not None:
            self._bar.update(self.frames - self._bar.n)
        kill_point("step", self.frames)
        return True

    def _on_rollout_start(self) -> None:
        # Evaluations and checkpoints happen between rollouts: there, every transition up to num_timesteps is in
        # the replay buffer and every gradient update due has been made (in on_step, SB3 has not yet stored the
        # step's transition), so a checkpoint is exactly the state of the run at its step count.
        if self.frames >= self._next_eval:
            self.run_evaluation()
            self._next_eval = self._next_multiple(self.frames, self.eval_every)
        if self.frames >= self._next_checkpoint and not self._wait_for_episode_end():
            self.checkpoint()
            self._next_checkpoint = self._next_multiple(self.frames, self.checkpoint_every)

    def _wait_for_episode_end(self) -> bool:
        """Whether a due checkpoint waits: mid-episode, unless it has waited ``checkpoint_every`` frames already."""
        overdue = self.frames >= self._next_checkpoint + self.checkpoint_every
        return records_resets(self.model) and not at_episode_start(self.model) and not overdue

    def _on_training_end(self) -> None:
        self.close_progress()

    def close_progress(self) -> None:
        """Close the progress bar (SB3 skips ``_on_training_end`` when ``learn`` raises, e.g. on Ctrl-C)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- the three jobs -------------------------------------------------------------------------------------
    def _write_row(self, kind: str, **fields: Any) -> None:
        """One ``metrics.csv`` row at the current step; the step, time and dormant-ratio columns are filled in."""
        self.writer.write(
            kind=kind,
            frames=self.frames,
            steps=self.model.num_timesteps,
            episode=self.episodes,
            wall_time=round(self.wall_time, 3),
            dormant_ratio=dormant_ratio(self.model),
            **fields,
        )

    def _log_episode(self, info: dict[str, Any]) -> None:
        self.episodes += 1
        episode = info.get("episode", {})
        success = info.get("success", info.get("is_success"))
        final = info.get("success_now", success)
        self._last_reward = episode.get("r")
        self._last_success = success
        self._write_row(
            "train",
            reward=None if episode.get("r") is None else float(episode["r"]),
            length=episode.get("l"),
            success=None if success is None else float(success),
            success_final=None if final is None else float(final),
        )
        self._refresh_bar()

    def run_evaluation(self) -> EvalResult | None:
        """Evaluate now (if there is an eval env), write the row, log to TensorBoard."""
        if self.eval_env is None or self.last_eval_frames == self.frames:
            return self.last_eval
        video_path = self.run_dir.videos / f"eval_{self.frames:010d}.mp4" if self.video else None
        result = evaluate(self.model, self.eval_env, self.eval_episodes, video_path=video_path, seed=self.eval_seed)
        kill_point("eval", self.frames)
        self._write_row(
            "eval",
            reward=result.reward,
            reward_std=result.reward_std,
            length=result.length,
            success=result.success,
            success_final=result.success_final,
            episodes=result.episodes,
        )
        self.logger.record("eval/mean_reward", result.reward)
        if result.success is not None:
            self.logger.record("eval/success_rate", result.success)
            self.logger.record("eval/success_rate_final_step", result.success_final)
        self.last_eval, self.last_eval_frames = result, self.frames
        kill_point("eval-done", self.frames)
        self._refresh_bar()
        return result

    def checkpoint(self) -> CheckpointInfo:
        """Save model, replay buffer and random state atomically now, then record it in ``status.json``."""
        info = save_checkpoint(
            self.model,
            self.run_dir,
            frames=self.frames,
            episodes=self.episodes,
            wall_time=self.wall_time,
            save_replay_buffer=self.save_replay_buffer,
            metrics_rows=self.writer.rows,
            last_eval_frames=self.last_eval_frames,
            state=capture_run_state(self.model, self.eval_env),
        )
        self.last_checkpoint = info
        self.status.state, self.status.frames, self.status.total_frames = RUNNING, info.frames, self.total_frames
        self.status.checkpoint, self.status.wall_time = f"checkpoints/{info.dir}", info.wall_time
        self.status.write(self.run_dir)
        kill_point("checkpoint-done", info.frames)
        return info

    def _refresh_bar(self) -> None:
        if self._bar is None:
            return
        postfix: dict[str, str] = {}
        if self._last_reward is not None:
            postfix["R"] = f"{self._last_reward:.1f}"
        if self._last_success is not None:
            postfix["succ"] = f"{float(self._last_success):.0f}"
        if self.last_eval is not None:
            postfix["eval_R"] = f"{self.last_eval.reward:.1f}"
            if self.last_eval.success is not None:
                postfix["eval_succ"] = f"{self.last_eval.success:.2f}"
        dormant = dormant_ratio(self.model)
        if dormant is not None:
            postfix["dormant"] = f"{dormant:.3f}"
        self._bar.set_postfix(postfix, refresh=False)
