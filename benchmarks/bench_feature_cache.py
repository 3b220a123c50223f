"""Feature cache throughput, measured side by side in one run (nothing here is asserted).

1. Extraction: ``extract_features`` (read frames from the HDF5 episode dataset, hash them, run the backbone, append
   and commit to the feature file) against a bare batched backbone loop over the same frames already in memory.
   Overhead target: under 5%. Runs alternate (bare, extract, bare, extract...) so that load from other processes
   hits both alike; the table gives the wall-clock overhead (best and median of the repeats) and the CPU-time
   overhead (process CPU seconds per frame, all threads; less sensitive to other processes on a shared machine).
2. Random-batch reads (batch 256, uniform indices with replacement): ``FeatureSet.read`` with its chunk cache warm,
   and cold (``cache_bytes=0``: every batch read from the file), plain h5py fancy indexing (sorted unique indices),
   and NumPy fancy indexing of the same rows held in memory.

Usage: ``python benchmarks/bench_feature_cache.py [--quick] [--device cpu|cuda] [--workdir DIR]``.
Backbones use random weights (throughput does not depend on the weight values).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import h5py
import numpy as np
import torch

from pvrw.backbones.registry import create_backbone
from pvrw.feature_cache import EpisodeWriter, FeatureSpec, FeatureStore
from pvrw.feature_cache.extraction import extract_features


def synthetic_frames(n: int, side: int, seed: int = 0) -> np.ndarray:
    """Smooth moving gradients plus noise: compresses roughly like rendered frames, unlike pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    frames = np.empty((n, 3, side, side), dtype=np.uint8)
    for i in range(n):
        phase = i / 25.0
        for c in range(3):
            base = 127 + 100 * np.sin(2 * np.pi * (xx * (c + 1) + yy + phase))
            frames[i, c] = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    return frames


def write_dataset(path: str, frames: np.ndarray, episode_len: int = 50) -> None:
    with EpisodeWriter(path, frames.shape[1:], action_dim=4, env_id="synthetic", policy="none") as writer:
        for start in range(0, len(frames) - 1, episode_len + 1):
            chunk = frames[start : start + episode_len + 1]
            steps = len(chunk) - 1
            if steps < 1:
                break
            zeros = np.zeros(steps, dtype=bool)
            writer.add_episode(chunk, np.zeros((steps, 4)), np.zeros(steps), zeros, zeros, zeros)


def bench_extraction(
    workdir: str, name: str, n_frames: int, batch: int, repeats: int, device: str, compressions: tuple
) -> list[dict]:
    side = 112
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = create_backbone(name, weights="random", resolution=side, device=device)
    frames_path = os.path.join(workdir, f"frames_{name}.h5")
    if os.path.exists(frames_path):
        os.remove(frames_path)
    write_dataset(frames_path, synthetic_frames(n_frames, side))
    from pvrw.feature_cache import EpisodeDataset

    with EpisodeDataset(frames_path) as ds:
        frames = ds.frames()
    n = len(frames)
    backbone.embed(frames[:batch], batch_size=batch)  # warm-up (allocations, kernels)

    def bare() -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        for start in range(0, n, batch):
            backbone.embed(frames[start : start + batch], batch_size=batch)
        return time.perf_counter() - t, time.process_time() - c

    def extract(i: int, compression: str | None) -> tuple[float, float]:
        out = os.path.join(workdir, f"features_{name}_{i}.h5")
        t, c = time.perf_counter(), time.process_time()
        extract_features(frames_path, [backbone], out, batch_size=batch, compression=compression)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        sizes[compression] = os.path.getsize(out)
        os.remove(out)
        return wall, cpu

    sizes: dict = {}
    bare_runs: list[tuple[float, float]] = []
    extract_runs: dict = {c: [] for c in compressions}
    for i in range(repeats):
        bare_runs.append(bare())
        for compression in compressions:
            extract_runs[compression].append(extract(i, compression))

    def stats(runs: list[tuple[float, float]]) -> dict:
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        return {"best": n / min(walls), "median": n / statistics.median(walls), "cpu": statistics.median(cpus) / n}

    bare_stats = stats(bare_runs)
    return [
        {
            "name": name,
            "compression": str(compression),
            "frames": n,
            "shape": backbone.output_shape,
            "bare": bare_stats,
            "extract": stats(runs),
            "MiB": sizes[compression] / 2**20,
        }
        for compression, runs in extract_runs.items()
    ]


def bench_reads(workdir: str, dim: int, rows: int, dtype: str, batches: int, batch: int = 256) -> dict:
    path = os.path.join(workdir, f"reads_{dim}_{dtype}.h5")
    if os.path.exists(path):
        os.remove(path)
    x = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    spec = FeatureSpec("bench", "random", 112, "none", (dim,), dtype)
    with FeatureStore(path, "a") as store:
        fs = store.require_set(spec)
        for start in range(0, rows, 4096):
            fs.append(x[start : start + 4096])
    with FeatureStore(path) as store:
        memory = store.get_set("bench").read_range(0, rows)  # the same (rounded) values, in memory
    rng = np.random.default_rng(1)
    index_batches = [rng.integers(0, rows, batch) for _ in range(batches)]

    def rate(fn, rounds: int = 3) -> float:
        """Best of ``rounds`` passes over the same batches (other processes share this machine)."""
        fn(index_batches[0])
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for idx in index_batches:
                fn(idx)
            best = min(best, time.perf_counter() - t)
        return batches * batch / best

    result = {"dim": dim, "rows": rows, "dtype": dtype, "MiB": rows * dim * 4 / 2**20}
    result["numpy"] = rate(lambda idx: memory[idx])
    with FeatureStore(path) as store:
        fs = store.get_set("bench")
        for idx in index_batches:  # warm the chunk cache (one pass over the batches)
            fs.read(idx)
        result["store_warm"] = rate(fs.read)
    with FeatureStore(path, cache_bytes=0) as store:
        result["store_cold"] = rate(store.get_set("bench").read)
    with h5py.File(path, "r") as f:
        ds = f["sets/bench/features"]

        def fancy(idx):
            unique, inverse = np.unique(idx, return_inverse=True)
            return ds[unique][inverse]

        result["h5py_fancy"] = rate(fancy)
    os.remove(path)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, noisy numbers)")
    parser.add_argument("--device", default="cpu", help="torch device for the extraction part")
    parser.add_argument("--workdir", default=None, help="folder for the temporary HDF5 files")
    parser.add_argument("--repeats", type=int, default=3, help="alternating bare/extract repeats")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    workdir = args.workdir or tempfile.mkdtemp(prefix="pvrw_bench_cache_")
    quick = args.quick

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device},"
        f" h5py {h5py.version.version}"
        f" (HDF5 {h5py.version.hdf5_version}), workdir {workdir}"
    )
    print("\n1. Extraction vs a bare batched backbone loop (112x112 frames, batch 32, random weights)")
    header = (
        f"{'backbone':<10}{'compress':>9}{'features':>14}{'frames':>7}{'bare f/s':>10}{'extract f/s':>12}"
        f"{'wall ovh best':>14}{'wall ovh med':>13}{'bare CPU ms/f':>14}{'extr CPU ms/f':>14}{'CPU ovh':>9}"
        f"{'file MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    cpu = args.device == "cpu"
    cases = (
        ("resnet18", 96 if quick else (512 if cpu else 4096), ("lzf", None)),
        ("dinov2", 32 if quick else (64 if cpu else 2048), ("lzf",)),
    )
    for name, n, compressions in cases:
        rows = bench_extraction(workdir, name, n, 32, 1 if quick else args.repeats, args.device, compressions)
        for r in rows:
            b, e = r["bare"], r["extract"]
            print(
                f"{r['name']:<10}{r['compression']:>9}{str(r['shape']):>14}{r['frames']:>7}{b['median']:>10.1f}"
                f"{e['median']:>12.1f}{b['best'] / e['best'] - 1:>14.1%}{b['median'] / e['median'] - 1:>13.1%}"
                f"{1e3 * b['cpu']:>14.2f}{1e3 * e['cpu']:>14.2f}{e['cpu'] / b['cpu'] - 1:>9.1%}{r['MiB']:>9.1f}",
                flush=True,
            )

    print("\n2. Random-batch reads, batch 256 (samples/s; x numpy = fraction of in-memory NumPy speed)")
    header = (
        f"{'dim':>6}{'rows':>8}{'dtype':>10}{'MiB f32':>9}{'numpy':>12}{'store warm':>12}{'x numpy':>9}"
        f"{'store cold':>12}{'x numpy':>9}{'h5py fancy':>12}{'x numpy':>9}"
    )
    print(header)
    print("-" * len(header))
    cases = [(768, 20000, "float32"), (768, 20000, "bfloat16"), (3840, 5000, "float32"), (25088, 800, "float32")]
    for dim, rows, dtype in cases:
        rows = rows // 8 if quick else rows
        r = bench_reads(workdir, dim, rows, dtype, batches=10 if quick else 40)
        print(
            f"{r['dim']:>6}{r['rows']:>8}{r['dtype']:>10}{r['MiB']:>9.0f}{r['numpy']:>12.0f}{r['store_warm']:>12.0f}"
            f"{r['store_warm'] / r['numpy']:>9.2f}{r['store_cold']:>12.0f}{r['store_cold'] / r['numpy']:>9.3f}"
            f"{r['h5py_fancy']:>12.0f}{r['h5py_fancy'] / r['numpy']:>9.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
