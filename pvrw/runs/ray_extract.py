"""``pvrw extract --backend ray``: the feature cache's extraction with the forward passes fanned out over Ray.

:func:`extract_features_ray` runs the cache's own :func:`~pvrw.feature_cache.extraction.extract_features` (single
writer, resumable, one consistent HDF5 file) with a backbone whose ``embed`` splits each chunk of frames over a pool
of Ray actors, each holding one replica of the backbone (on a GPU when asked). Workers only compute; the driver
reads frames, hashes them and appends the features in order.
"""

from __future__ import annotations

import os
from typing import Any

from pvrw.runs.ray_backend import check_resources, import_ray, init_ray


class _EmbedWorker:
    """A Ray actor holding one backbone replica at a time; it only computes, the driver writes."""

    def __init__(self, device: str, threads: int):
        import pvrw  # noqa: F401

        self.device, self.backbone = device, None
        if threads:
            import torch

            torch.set_num_threads(threads)

    def load(self, backbone: Any) -> str:
        self.backbone = backbone.to(self.device)
        return str(self.backbone.device)

    def embed(self, frames: Any, batch_size: int) -> Any:
        import warnings

        with warnings.catch_warnings():  # Ray hands over arrays read-only (zero-copy); the backbone only reads them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return self.backbone.embed(frames, batch_size=batch_size)


class _WorkerPool:
    """``num_workers`` embedding actors; :meth:`embed` splits a chunk of frames over them and keeps their order."""

    def __init__(self, ray: Any, num_workers: int, cpus: float, gpus: float, device: str):
        threads = int(cpus) if float(cpus).is_integer() and cpus >= 1 else 0
        actor = ray.remote(num_cpus=cpus, num_gpus=gpus)(_EmbedWorker)
        self.ray, self.loaded = ray, None
        self.actors = [actor.remote(device, threads) for _ in range(num_workers)]

    def embed(self, backbone: Any, frames: Any, batch_size: int) -> Any:
        import numpy as np

        if self.loaded is not backbone:  # one backbone at a time: extract_features goes backbone by backbone
            replica = self.ray.put(backbone)
            self.ray.get([a.load.remote(replica) for a in self.actors])
            self.loaded = backbone
        pieces = [p for p in np.array_split(frames, len(self.actors)) if len(p)]
        refs = [a.embed.remote(p, batch_size) for a, p in zip(self.actors, pieces)]
        return np.concatenate(self.ray.get(refs))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


class _RayBackbone:
    """The driver's backbone (its name, fingerprint, preprocessing... for the feature file) computing on the pool."""

    def __init__(self, backbone: Any, pool: _WorkerPool, batch_size: int):
        self._backbone, self._pool, self._batch_size = backbone, pool, batch_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backbone, name)

    def embed(self, frames: Any, batch_size: int = 64) -> Any:
        # ``batch_size`` here is the whole chunk; each worker runs its piece in batches of the user's size
        return self._pool.embed(self._backbone, frames, self._batch_size)


def extract_features_ray(
    frames_path: str | os.PathLike,
    backbones: list[Any],
    out: str | os.PathLike,
    *,
    batch_size: int = 64,
    address: str | None = None,
    num_workers: int | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    **extract_kwargs: Any,
) -> dict[str, dict[str, int]]:
    """:func:`~pvrw.feature_cache.extraction.extract_features` with the backbone forward passes fanned out over Ray.

    The driver reads the frames, hashes them and appends the features (one writer: the file stays consistent and
    an interrupted extraction resumes); each chunk of ``batch_size x num_workers`` frames is split into one piece
    per worker, computed in parallel by the workers' backbone replicas and appended in frame order. Replicas are
    copies of the driver's backbones (sent from CPU), so every worker computes with the exact same weights.

    :param batch_size: frames per forward pass on each worker.
    :param address: as in :func:`~pvrw.runs.ray_backend.run_ray`.
    :param num_workers: embedding actors (default: as many as the cluster's free CPUs or GPUs allow).
    :param cpus_per_worker: CPUs per actor (its torch thread count when a whole number).
    :param gpus_per_worker: GPUs per actor; > 0 runs the replicas on CUDA.
    :param extract_kwargs: the other arguments of ``extract_features`` (``dtype``, ``progress``, ``max_frames``...).
    :return: as ``extract_features``.
    """
    ray = import_ray()
    from pvrw.feature_cache.extraction import extract_features

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    backbones = [b.to("cpu") if hasattr(b, "to") else b for b in backbones]
    started = init_ray(address)
    pool = None
    try:
        check_resources(ray, cpus_per_worker, gpus_per_worker, "each extraction worker", fix="--gpus-per-worker")
        if num_workers is None:
            free = ray.available_resources()
            fits = free.get("GPU", 0) // gpus_per_worker if gpus_per_worker else free.get("CPU", 0) // cpus_per_worker
            num_workers = max(1, int(fits))
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        pool = _WorkerPool(ray, num_workers, cpus_per_worker, gpus_per_worker, "cuda" if gpus_per_worker else "cpu")
        return extract_features(
            frames_path,
            [_RayBackbone(b, pool, batch_size) for b in backbones],
            out,
            batch_size=batch_size * num_workers,
            **extract_kwargs,
        )
    finally:
        if pool is not None:
            pool.close()
        if started:
            ray.shutdown()
