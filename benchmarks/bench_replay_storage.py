"""Replay storage benchmark: checkpoint cost, resume time, RSS and sample rate of DrMReplayBuffer in memory vs on disk.

Measured, not asserted. Run: ``python benchmarks/bench_replay_storage.py`` (a few minutes on 2 CPU cores with the
defaults; ``--transitions 100000`` for the issue's sizes). Everything written goes under ``--dir`` and is deleted.

For each observation (84 and 112 px pixels with frame stack 3, and 3 x 768 features stored as float16), one child
process per storage fills a buffer with ``--transitions`` transitions (250-step episodes, n_steps 3) and measures:

- ``memory``: a buffer whose capacity is what it holds (a full-capacity one does not fit in this machine's RAM at
  1M transitions). Checkpoint = ``pickle.dump`` (what ``save_replay_buffer`` does) to a file + fsync: with this
  change, the filled part. "Whole pickle" is what a pickle of the whole arrays at ``--capacity`` writes: its bytes
  are the buffer's ``nbytes`` at that capacity plus the pickle's own overhead (measured); its seconds are
  extrapolated from the write rate measured for the filled part (marked ``~``): it is not written here.
  Resume = ``pickle.load`` with the file's pages dropped from the page cache.
- ``disk``: a buffer with capacity ``--capacity`` in memory-mapped (sparse) files. Checkpoint = ``checkpoint()``
  after the transitions were added (flush of what the kernel has not written back yet + state); bytes = rows written
  since the previous checkpoint + undo journal + state file. Resume = ``DrMReplayBuffer.open`` with the pages dropped.
- Peak RSS of the child (VmHWM) after filling and sampling, before any checkpoint or resume, and the RssAnon /
  RssFile split at that point.
- ``sample(256)`` rate (batches/s, median of rounds): warm (the files' data read into the page cache first) and, for
  disk, cold (after ``posix_fadvise(DONTNEED)`` on its files; on a virtual disk the host may still cache them).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from gymnasium import spaces

CASES = {
    "pixels 84": dict(shape=(9, 84, 84), dtype=np.uint8, storage_dtype=None),
    "pixels 112": dict(shape=(9, 112, 112), dtype=np.uint8, storage_dtype=None),
    "features 3x768": dict(shape=(3, 768), dtype=np.float32, storage_dtype="float16"),
}
EPISODE_LENGTH = 250


def _proc_status() -> dict[str, int]:
    """:return: VmHWM, VmRSS, RssAnon, RssFile of this process in bytes"""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024
    return out


def _drop_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def _warm_cache(paths: list[Path]) -> None:
    """Read the data extents of (sparse) files, so that the page cache holds them."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            size, offset = os.fstat(fd).st_size, 0
            while offset < size:
                try:
                    offset = os.lseek(fd, offset, os.SEEK_DATA)
                    end = os.lseek(fd, offset, os.SEEK_HOLE)
                except OSError:  # no data after offset
                    break
                while offset < end:
                    offset += len(os.pread(fd, min(8 << 20, end - offset), offset))
        finally:
            os.close(fd)


def _fill(buffer, n: int, case: dict, rng: np.random.Generator) -> None:
    """Add ``n`` transitions: zero-padded episodes of EPISODE_LENGTH steps, frames drawn from a pool."""
    per_frame = (case["shape"][0] // 3, *case["shape"][1:])
    if case["dtype"] == np.uint8:
        pool = rng.integers(0, 256, (61, *per_frame), dtype=np.uint8)
    else:
        pool = rng.normal(size=(61, *per_frame)).astype(np.float32)
    action, reward = np.zeros((1, 4), np.float32), np.zeros(1, np.float32)
    t, frame = 0, 0
    while t < n:
        stack = [np.zeros_like(pool[0])] * 2 + [pool[frame % 61]]
        for step in range(min(EPISODE_LENGTH, n - t)):
            frame += 1
            nxt = [*stack[1:], pool[frame % 61]]
            end = step == EPISODE_LENGTH - 1
            buffer.add(np.concatenate(stack)[None], np.concatenate(nxt)[None], action, reward, np.array([end]),
                       [{"TimeLimit.truncated": end}])  # fmt: skip
            stack = nxt
        t += min(EPISODE_LENGTH, n - t)


def _sample_rate(buffer, batches: int, rounds: int = 5) -> float:
    np.random.seed(0)
    buffer.sample(256)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batches):
            buffer.sample(256)
        rates.append(batches / (time.perf_counter() - start))
    return statistics.median(rates)


class _CountingSink:
    def __init__(self):
        self.n = 0

    def write(self, data) -> int:
        self.n += memoryview(data).nbytes
        return memoryview(data).nbytes


def child(label: str, storage: str, capacity: int, transitions: int, batches: int, rounds: int, directory: Path) -> dict:
    """Measure one (observation, storage) in this process; see the module docstring."""
    from pvrw.drm.buffers import DrMReplayBuffer

    case = CASES[label]
    space = spaces.Box(0, 255, case["shape"], np.uint8) if case["dtype"] == np.uint8 else spaces.Box(
        -np.inf, np.inf, case["shape"], np.float32)  # fmt: skip
    kwargs = dict(n_steps=3, gamma=0.99, frame_stack=3, storage_dtype=case["storage_dtype"])
    action_space = spaces.Box(-1, 1, (4,), np.float32)
    directory = Path(directory)
    path = directory / "replay"
    if storage == "disk":
        buffer = DrMReplayBuffer(capacity, space, action_space, "cpu", storage="disk", path=path, **kwargs)
    else:
        buffer = DrMReplayBuffer(transitions, space, action_space, "cpu", **kwargs)
    start = time.perf_counter()
    _fill(buffer, transitions, case, np.random.default_rng(0))
    out = {"add_rate": transitions / (time.perf_counter() - start)}
    out["warm"] = _sample_rate(buffer, batches)
    out.update(_proc_status())
    if storage == "memory":
        file = directory / "replay_buffer.pkl"
        start = time.perf_counter()
        with open(file, "wb") as f:
            pickle.dump(buffer, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        out["checkpoint_s"], out["checkpoint_bytes"] = time.perf_counter() - start, file.stat().st_size
        stored = sum(getattr(buffer, n)[: buffer._filled_rows(n)].nbytes for n in ("frames", "obs_frame", "actions",
                                                                                  "rewards", "dones", "timeouts"))
        overhead = out["checkpoint_bytes"] - stored
        full = DrMReplayBuffer(capacity, space, action_space, "cpu", **kwargs) if capacity <= transitions else None
        out["whole_bytes"] = (full or buffer).nbytes() * (1 if full else capacity / transitions) + overhead
        del buffer, full
        _drop_cache([file])
        start = time.perf_counter()
        with open(file, "rb") as f:
            pickle.load(f)
        out["resume_s"] = time.perf_counter() - start
    else:
        disk = buffer._disk
        frame_rows = int(buffer.frames_written.sum())
        data = frame_rows * disk.specs["frames"].row_bytes + transitions * sum(
            disk.specs[n].row_bytes for n in ("obs_frame", "actions", "rewards", "dones", "timeouts"))  # fmt: skip
        journal_before = disk.bytes_journaled
        start = time.perf_counter()
        buffer.checkpoint()
        out["checkpoint_s"] = time.perf_counter() - start
        out["checkpoint_bytes"] = data + disk.bytes_journaled + disk.bytes_state
        out["journal_bytes"], out["journal_during_adds"] = disk.bytes_journaled - journal_before, journal_before
        out["disk_used"] = sum(p.stat().st_blocks * 512 for p in path.iterdir())
        buffer.close()
        del buffer
        _drop_cache(list(path.iterdir()))
        start = time.perf_counter()
        buffer = DrMReplayBuffer.open(path)
        out["resume_s"] = time.perf_counter() - start
        out["cold"] = _sample_rate(buffer, batches, rounds=1)
        _warm_cache(list(path.iterdir()))  # warm: all of the data in the page cache, as the memory buffer's is in RAM
        # warm rates, interleaved with a memory buffer holding the same transitions (same load on a busy machine)
        memory = DrMReplayBuffer(transitions, space, action_space, "cpu", **kwargs)
        _fill(memory, transitions, case, np.random.default_rng(0))
        rates = {"memory": [], "disk": []}
        for i in range(rounds):
            for how in np.random.default_rng(i).permutation(list(rates)):
                rates[how].append(_sample_rate(memory if how == "memory" else buffer, batches, rounds=1))
        out.update({f"warm_{how}": statistics.median(r) for how, r in rates.items()})
        buffer.close()
    out["VmHWM_end"] = _proc_status()["VmHWM"]
    return out


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, default=20_000, help="transitions added before the checkpoint")
    parser.add_argument("--capacity", type=int, default=1_000_000, help="buffer_size of the disk buffer")
    parser.add_argument("--batches", type=int, default=10, help="sample(256) calls per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {list(CASES)}")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the files are written (then deleted)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return

    print(f"disk at {args.dir}: {_fmt_bytes(shutil.disk_usage(args.dir).free)} free; {os.cpu_count()} CPUs")
    results = {}
    for label in args.cases.split(","):
        for storage in ("memory", "disk"):
            directory = Path(tempfile.mkdtemp(prefix="bench_replay_", dir=args.dir))
            spec = dict(label=label, storage=storage, capacity=args.capacity, transitions=args.transitions,
                        batches=args.batches, rounds=args.rounds, directory=str(directory))  # fmt: skip
            try:
                run = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                     text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            if run.returncode:
                sys.exit(f"{label} {storage} failed:\n{run.stderr}")
            results[label, storage] = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"  measured {label} {storage}", file=sys.stderr)

    n, cap = args.transitions, args.capacity
    print(f"\nCheckpoint and resume after {n:,} new transitions (disk buffer capacity {cap:,}; whole pickle at {cap:,})")
    print(f"{'observation':<16}{'whole pickle':>16}{'~s':>7}{'filled pickle':>15}{'s':>7}{'disk ckpt':>12}{'s':>7}"
          f"{'whole/disk':>11}{'filled/disk s':>14}{'resume mem s':>13}{'resume disk s':>14}")  # fmt: skip
    for label in args.cases.split(","):
        m, d = results[label, "memory"], results[label, "disk"]
        rate = m["checkpoint_bytes"] / m["checkpoint_s"]
        print(f"{label:<16}{_fmt_bytes(m['whole_bytes']):>16}{m['whole_bytes'] / rate:>7.1f}"
              f"{_fmt_bytes(m['checkpoint_bytes']):>15}{m['checkpoint_s']:>7.2f}{_fmt_bytes(d['checkpoint_bytes']):>12}"
              f"{d['checkpoint_s']:>7.2f}{m['whole_bytes'] / d['checkpoint_bytes']:>11.0f}"
              f"{m['checkpoint_s'] / d['checkpoint_s']:>14.1f}{m['resume_s']:>13.2f}{d['resume_s']:>14.3f}")  # fmt: skip
    print(f"\nRSS after filling {n:,} transitions and sampling (peak VmHWM; RssAnon / RssFile at that point), add rate")
    print(f"{'observation':<16}{'memory peak':>13}{'disk peak':>11}{'disk anon':>11}{'disk file':>11}"
          f"{'mem adds/s':>12}{'disk adds/s':>12}{'disk used':>11}")  # fmt: skip
    for label in args.cases.split(","):
        m, d = results[label, "memory"], results[label, "disk"]
        print(f"{label:<16}{_fmt_bytes(m['VmHWM']):>13}{_fmt_bytes(d['VmHWM']):>11}{_fmt_bytes(d['RssAnon']):>11}"
              f"{_fmt_bytes(d['RssFile']):>11}{m['add_rate']:>12.0f}{d['add_rate']:>12.0f}"
              f"{_fmt_bytes(d['disk_used']):>11}")  # fmt: skip
    print(f"\nsample(256) batches/s, median of {args.rounds} rounds of {args.batches} batches, interleaved with a memory "
          "buffer holding the same data; cold: 1 round after dropping the disk buffer's pages from the page cache")
    print(f"{'observation':<16}{'memory':>9}{'disk warm':>11}{'ratio':>7}{'disk cold':>11}{'ratio':>7}")
    for label in args.cases.split(","):
        d = results[label, "disk"]
        memory = d["warm_memory"]
        print(f"{label:<16}{memory:>9.1f}{d['warm_disk']:>11.1f}{d['warm_disk'] / memory:>7.2f}{d['cold']:>11.1f}"
              f"{d['cold'] / memory:>7.2f}")  # fmt: skip

if __name__ == "__main__":
    main()
