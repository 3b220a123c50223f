"""``run_training(config, run_dir) -> RunStatus``: train one run to its budget, resuming whatever is there.

This is the one entry point every backend calls (``pvrw train``, the local sweep queue, a Ray trial): it is
idempotent. A finished run returns at once; an unfinished one (stopped, killed, failed) continues from its
last checkpoint, with ``metrics.csv`` cut back to that checkpoint, so nothing is lost but the steps after it. The
checkpoint holds the random and rollout state too, so on CPU the resumed run ends bit-identical to an unbroken one.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import importlib
import os
import traceback
import warnings
from pathlib import Path
from typing import Any

from pvrw._diskspace import DiskFullError, disk_full_errno, format_bytes, free_bytes, tree_bytes
from pvrw.runs.config import ConfigError, RunConfig, load_algo_class, load_config, save_config
from pvrw.runs.layout import FAILED, FINISHED, RUNNING, RunDir, RunStatus, remove_run_files
from pvrw.runs.lock import holding_run_lock

#: config keys that define what is trained; a run directory refuses a config that changes one of them
IDENTITY_KEYS: tuple[str, ...] = (
    "algo", "env", "pvr", "resolution", "seed", "frame_stack", "action_repeat",
    "weights", "policy", "env_kwargs", "pvr_kwargs", "algo_kwargs",
)  # fmt: skip


def check_compatible(old: RunConfig, new: RunConfig, where: Path) -> None:
    """Refuse to continue a run directory with a config that trains something else."""

    def shown(mapping: dict[str, Any], key: str) -> str:
        return repr(mapping[key]) if key in mapping else "unset"

    for key in IDENTITY_KEYS:
        before, after = getattr(old, key), getattr(new, key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):  # name the entry, not the whole mapping
            sub = next(k for k in sorted({*before, *after}) if shown(before, k) != shown(after, k))
            what = f"{key}.{sub}={shown(before, sub)}, not {shown(after, sub)}"
        else:
            what = f"{key}={before!r}, not {after!r}"
        raise ConfigError(
            f"{where} holds a run with {what}; use another --out directory, or --resume it without changing that key"
        )


def _import_object(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"algo_kwargs: cannot import {spec!r} (expected 'package.module:Name'): {err}") from None


def algo_constructor_kwargs(config: RunConfig) -> dict[str, Any]:
    """``config.algo_kwargs`` made ready for the constructor.

    ``replay_buffer_class`` may be written ``"package.module:Class"`` in YAML. SAC/TD3 on Meta-World frame stacks
    get :class:`~pvrw.drm.buffers.DrMReplayBuffer` (one-step, each frame stored once) unless a buffer is named:
    SB3's default buffer would store every stack twice (over 200 GB for 1M transitions at 112 px); the sampled
    transitions are the same.
    """
    kwargs = copy.deepcopy(config.algo_kwargs)  # SB3 adds keys to the policy_kwargs it is given (SAC: use_sde)
    if config.precision != "fp32":
        kwargs["precision"] = config.precision
    if isinstance(kwargs.get("replay_buffer_class"), str):
        kwargs["replay_buffer_class"] = _import_object(kwargs["replay_buffer_class"])
    if (
        config.algo in ("sac", "td3")
        and config.is_metaworld
        and config.frame_stack > 1
        and "replay_buffer_class" not in kwargs
    ):
        from pvrw.drm.buffers import DrMReplayBuffer

        kwargs["replay_buffer_class"] = DrMReplayBuffer
        kwargs["replay_buffer_kwargs"] = {
            "n_steps": kwargs.get("n_steps", 1),
            "gamma": kwargs.get("gamma", 0.99),
            **(kwargs.get("replay_buffer_kwargs") or {}),
        }
    return kwargs


def build_model(config: RunConfig, env: Any, run_dir: RunDir | None = None) -> Any:
    """A new algorithm instance for ``config`` on ``env``; with ``run_dir``, its replay buffer is stored as
    ``config.replay_storage`` says (:func:`pvrw.runs.replay.add_replay_storage`)."""
    from pvrw.runs.envs import default_policy, finetune_policy_kwargs, finetunes, resolve_device
    from pvrw.runs.replay import add_replay_storage

    algo_class = load_algo_class(config.algo)
    policy = default_policy(config, env.observation_space)
    kwargs = algo_constructor_kwargs(config)
    if run_dir is not None:
        add_replay_storage(kwargs, config, env.observation_space, run_dir)
    if finetunes(config):  # the backbone is built inside the policy; the user's policy_kwargs win
        extra = finetune_policy_kwargs(config)
        given = dict(kwargs.get("policy_kwargs") or {})
        extra["features_extractor_kwargs"].update(given.pop("features_extractor_kwargs", None) or {})
        kwargs["policy_kwargs"] = {**extra, **given}
    device = resolve_device(config.device)
    try:
        return algo_class(policy, env, seed=config.seed, device=device, verbose=0, **kwargs)
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(
            f"algo_kwargs: {algo_class.__name__}({policy!r}, ...) refused the configuration: {err}"
        ) from err


@holding_run_lock
def run_training(config: RunConfig, run_dir: str | os.PathLike, progress: bool = False) -> RunStatus:
    """Train ``config`` in ``run_dir`` until ``config.frames``; resume from the last checkpoint if there is one.

    It holds the directory's lock throughout (:mod:`pvrw.runs.lock`) and refuses a directory that holds files but
    no pvrw run; a second process on the same directory raises :class:`~pvrw.runs.lock.RunLockedError`.

    :param config: the resolved, validated run configuration.
    :param run_dir: the run directory (created if missing).
    :param progress: show a progress bar.
    :return: the final status (``finished``); on error the status file says ``failed`` and the error is raised.
    """
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.monitor import Monitor

    from pvrw.runs.callbacks import RunCallback
    from pvrw.runs.checkpoint import latest_checkpoint, load_checkpoint, load_checkpoint_state
    from pvrw.runs.envs import EVAL_SEED_OFFSET, make_backbone, make_run_env, resolve_device
    from pvrw.runs.faults import kill_point
    from pvrw.runs.metrics import MetricsWriter, truncate_metrics
    from pvrw.runs.replay import (
        adopt_replay_dir,
        check_replay_space,
        close_replay,
        forget_replay,
        run_space_checked,
    )
    from pvrw.runs.rng_state import RecordResetState, restore_run_state

    from pvrw.runs.envs import check_run_setup

    check_run_setup(config.validate())  # before the run directory is created
    rd = RunDir(run_dir)
    if rd.config.is_file():
        check_compatible(load_config(rd.config), config, rd.root)
    rd.root.mkdir(parents=True, exist_ok=True)
    status = RunStatus.read(rd)
    if status.finished and status.frames >= config.frames:
        return status
    status.state, status.total_frames, status.attempts, status.error = RUNNING, config.frames, status.attempts + 1, None
    status.write(rd)

    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    env = eval_env = writer = callback = model = None
    try:
        backbone = make_backbone(config)
        env = Monitor(RecordResetState(make_run_env(config, backbone=backbone)))
        eval_env = make_run_env(config, evaluation=True, record_frames=config.video, backbone=backbone)
        checkpoint = latest_checkpoint(rd)
        if checkpoint is not None:
            with run_space_checked():
                model, checkpoint = load_checkpoint(
                    load_algo_class(config.algo), rd, env, device=resolve_device(config.device), info=checkpoint
                )
            adopt_replay_dir(model, rd)
            if not checkpoint.has_replay_buffer:
                forget_replay(rd)  # the buffer starts empty: a new storage
            truncate_metrics(rd.metrics, checkpoint.steps, rows=checkpoint.metrics_rows)
            if checkpoint.metrics_rows is None:  # an older checkpoint: its evaluation is the last eval row kept
                checkpoint.last_eval_frames = _evaluated_at(rd, checkpoint.frames)
            episodes, wall_time = checkpoint.episodes, checkpoint.wall_time
        else:
            with run_space_checked():
                model = build_model(config, env, rd)
            # of an attempt that died before its first checkpoint
            remove_run_files(rd, ("metrics.csv", "videos", "replay"))
            episodes, wall_time = 0, 0.0
        check_replay_space(model, config, rd)
        # written once the run could be set up, so a directory whose setup failed (bad resolution, missing
        # weights) holds no config.yaml and can be started again with other settings
        save_config(config, rd.config)
        model.set_logger(configure(str(rd.tensorboard), ["tensorboard"]))
        writer = MetricsWriter(rd.metrics)
        callback = RunCallback(
            rd,
            writer,
            frames_per_step=config.frames_per_step,
            total_frames=config.frames,
            status=status,
            eval_env=eval_env,
            eval_every=config.eval_every,
            eval_episodes=config.eval_episodes,
            video=config.video,
            checkpoint_every=config.checkpoint_every,
            save_replay_buffer=config.save_replay_buffer,
            episodes=episodes,
            wall_time=wall_time,
            progress=progress,
            eval_seed=config.seed + EVAL_SEED_OFFSET,
            resumed_from=checkpoint,
        )
        if checkpoint is not None:  # last, so that nothing draws from the restored generators before learn
            problems = restore_run_state(model, eval_env, load_checkpoint_state(rd, checkpoint))
            if problems:
                warnings.warn(
                    f"{rd.root}: resuming from checkpoints/{checkpoint.dir}, not exactly as an unbroken run would "
                    f"continue: {'; '.join(problems)}",
                    stacklevel=2,
                )
        remaining = config.total_timesteps - model.num_timesteps
        if remaining > 0:
            model.learn(remaining, callback=callback, reset_num_timesteps=checkpoint is None, log_interval=1)
        else:
            callback.init_callback(model)
        callback.run_evaluation()  # the final evaluation, unless one just ran at this frame
        if callback.last_checkpoint is None or callback.last_checkpoint.steps != model.num_timesteps:
            callback.checkpoint()
        writer.close()
        _final_plot(rd)
        kill_point("finishing")
        status.state, status.frames = FINISHED, callback.frames
        status.write(rd)
        return status
    except BaseException as err:
        failure = _disk_full_error(rd, err) if disk_full_errno(err) is not None else err
        status.state = FAILED
        status.error = (
            "interrupted"
            if isinstance(err, KeyboardInterrupt)
            else "".join(traceback.format_exception_only(type(failure), failure)).strip()
        )
        try:
            status.write(rd)
        except OSError:
            if failure is err:
                raise
            failure.message += f" ({rd.status.name} could not be updated either: it still says '{RUNNING}')"
        if failure is err:
            raise
        raise failure from err
    finally:
        if callback is not None:
            callback.close_progress()  # before the caller reports the error, so the bar is not left on its line
        if writer is not None:
            with contextlib.suppress(OSError):  # still open only after an error, maybe a full disk: it was reported
                writer.close()
        for e in (env, eval_env):
            if e is not None:
                e.close()
        if model is not None:
            close_replay(model)


def _disk_full_error(rd: RunDir, error: BaseException) -> DiskFullError:
    """One line for a run that filled its disk: what could not be written, the space needed, what is intact."""
    from pvrw.runs.checkpoint import latest_checkpoint

    what = getattr(error, "what", None) or (
        f"{error.filename}" if getattr(error, "filename", None) else f"a file of the run in {rd.root}"
    )
    written = getattr(error, "written", 0)
    free = f"{format_bytes(free_bytes(rd.root))} are free"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            last, known = latest_checkpoint(rd), True
    except Exception:  # noqa: BLE001 (a damaged checkpoint: `--resume` says which; the disk is the news here)
        last, known = None, False
    if last is None:
        space = f"a checkpoint needs more than {format_bytes(written)}, {free}" if written else free
        intact = (
            "No checkpoint was written yet, so training restarts at frame 0"
            if known
            else "`pvrw train --resume` checks which checkpoint is intact"
        )
    else:
        space = f"a checkpoint needs about {format_bytes(max(written, tree_bytes(rd.checkpoints / last.dir)))}, {free}"
        intact = (
            f"The last checkpoint (frame {last.frames:,}, checkpoints/{last.dir}) and the metrics.csv rows up to it"
            " are intact"
        )
    return DiskFullError(
        f"disk full: could not write {what}; {space}. {intact}. Free space, then continue with"
        f" `pvrw train --resume {rd.root}`",
        disk_full_errno(error) or errno.ENOSPC,
    )


def _evaluated_at(rd: RunDir, frames: int) -> int | None:
    """``frames`` if the last evaluation row of ``metrics.csv`` is at ``frames``, else ``None``."""
    from pvrw.runs.metrics import last_value, read_metrics

    return frames if last_value(read_metrics(rd.metrics, "eval"), "frames") == frames else None


def _final_plot(rd: RunDir) -> None:
    from pvrw.runs.plotting import plot_runs

    try:
        plot_runs([rd.root], rd.plot, title=rd.root.name)
    except Exception as err:  # noqa: BLE001 (a figure is a convenience; never fail a finished run over it)
        warnings.warn(f"could not plot {rd.root}: {err}", stacklevel=2)
