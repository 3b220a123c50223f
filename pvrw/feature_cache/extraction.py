"""Offline extraction: features of every frame of an episode dataset, for any set of backbones, resumable.

Row ``i`` of each feature set is frame ``i`` of the source dataset. Every batch is appended and committed before the
next starts, so after an interruption (Ctrl-C, a kill, a crash) running the same extraction again continues at the
first uncommitted frame: no duplicates, no gaps. The output file is tied to its source dataset (by the dataset's
uuid) and copies its episode boundaries, so :meth:`FeatureSet.episode` serves whole episodes in order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pvrw._diskspace import DiskFullError
from pvrw.feature_cache._h5 import FeatureCacheError
from pvrw.feature_cache.content_cache import hash_frames
from pvrw.feature_cache.recording import EpisodeDataset
from pvrw.feature_cache.store import FeatureSpec, FeatureStore

logger = logging.getLogger(__name__)


def extract_features(
    frames_path: str | os.PathLike,
    backbones: Iterable[Any],
    out: str | os.PathLike,
    batch_size: int = 64,
    dtype: str = "float32",
    progress: bool = False,
    max_frames: int | None = None,
    compression: str | None = "auto",
) -> dict[str, dict[str, int]]:
    """Append features of the committed frames of ``frames_path`` to ``out``, one feature set per backbone.

    :param frames_path: a ``pvrw.episodes`` file (``pvrw record``); may still be recording: its committed episodes
        are extracted, a later run extends them.
    :param backbones: FrozenBackbones (each with name, fingerprint, resolution, preprocessing, output_shape, embed).
        A set already in ``out`` under a backbone's name must match it exactly, else it is refused.
    :param out: the feature file, created if missing, resumed if present.
    :param batch_size: frames per backbone call and per committed append.
    :param dtype: storage dtype of new sets (``float32``, ``float16``, ``bfloat16``).
    :param progress: show a tqdm bar per backbone.
    :param max_frames: stop after this many frames of the dataset (``None``: all).
    :param compression: HDF5 filter of new sets, see :meth:`FeatureStore.require_set`.
    :returns: per set name, ``{"done_before": rows found, "extracted": rows added, "total": frames}``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    backbones = list(backbones)
    names = [str(b.name) for b in backbones]
    if len(set(names)) != len(names):
        raise ValueError(f"each backbone may appear once, got {names}")
    report: dict[str, dict[str, int]] = {}
    total = 0
    try:
        with EpisodeDataset(frames_path) as dataset, FeatureStore(out, "a") as store:
            total = dataset.num_frames if max_frames is None else min(max_frames, dataset.num_frames)
            store.require_episode_index(dataset.uuid, os.fspath(frames_path))
            feature_sets = [
                store.require_set(FeatureSpec.from_backbone(b, dtype=dtype), compression=compression) for b in backbones
            ]
            _copy_episode_index(dataset, store)
            for backbone, feature_set in zip(backbones, feature_sets):
                done = len(feature_set)
                if done > total and max_frames is None:
                    raise FeatureCacheError(
                        f"{out}: set {feature_set.name!r} has {done} rows, the dataset only {total} frames"
                    )
                end = _extract_one(dataset, backbone, feature_set, done, total, batch_size, progress)
                report[feature_set.name] = {"done_before": done, "extracted": max(0, end - done), "total": total}
                logger.info("%s: %s rows %d..%d of %d", out, feature_set.name, done, end, total)
    except DiskFullError as error:
        raise _disk_full_error(error, out, names, total) from error
    return report


def _extract_one(
    dataset: EpisodeDataset, backbone: Any, feature_set: Any, start: int, total: int, batch_size: int, progress: bool
) -> int:
    """Embed frames ``[start, total)`` batch by batch; returns the committed row count at the end.

    Batch ``i`` is appended (compressed, written, flushed, committed) on a writer thread while the backbone runs on
    batch ``i + 1``: h5py releases the GIL while HDF5 compresses and writes, so the two overlap. At most one append is
    in flight, appends run in order, and an interruption waits for the one in flight, so committed rows never have
    gaps.
    """
    bar = _progress_bar(progress, feature_set.name, start, total)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pvrw-extract-writer")
    in_flight = None
    committed = start
    failed = False
    try:
        frames = dataset.frames(start, min(start + batch_size, total)) if start < total else None
        while frames is not None:
            features = backbone.embed(frames, batch_size=batch_size)
            hashes = hash_frames(frames)
            start += len(frames)
            frames = dataset.frames(start, min(start + batch_size, total)) if start < total else None
            if in_flight is not None:
                committed = in_flight.result()
                if bar is not None:
                    bar.update(committed - bar.n)
            in_flight = writer.submit(feature_set.append, features, hashes)
    except BaseException:
        failed = True
        raise
    finally:
        if in_flight is not None:
            try:
                committed = in_flight.result()  # never leave an append behind (also on Ctrl-C)
            except BaseException:
                if not failed:  # else it is the error being raised, or one that happened after it
                    raise
        writer.shutdown(wait=True)
        if bar is not None:
            bar.update(committed - bar.n)
            bar.close()
    return committed


def _disk_full_error(error: DiskFullError, out: str | os.PathLike, names: list[str], total: int) -> DiskFullError:
    """The store's disk-full error, with what is committed and how to continue."""
    try:
        done = {}
        if os.path.exists(out):
            with FeatureStore(out, "r") as store:
                done = {name: len(store.get_set(name)) for name in names if name in store}
        committed = ", ".join(f"{name} {n} of {total} frames" for name, n in done.items()) or "none"
    except (FeatureCacheError, OSError):  # e.g. still open here: HDF5 could not close it
        committed = f"the rows committed before (`pvrw cache info {out}` counts them)"
    return DiskFullError(
        f"disk full: {error.head}; committed and intact: {committed}. Free space, then run the same"
        " extraction (same --out) again: it continues after the committed frames",
        error.errno,
        what=error.what,
        head=error.head,
        written=error.written,
    )


def _copy_episode_index(dataset: EpisodeDataset, store: FeatureStore) -> None:
    have = store.num_episodes()
    n = dataset.num_episodes
    if have < n:
        table = dataset.episode_table()
        store.append_episodes(table["frame_start"][have:n], table["num_steps"][have:n] + 1)


def _progress_bar(enabled: bool, name: str, done: int, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=f"extract {name}", unit="frame")
