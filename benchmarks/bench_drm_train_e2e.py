"""Frames per second of a real short ``pvrw train`` (DrM on Meta-World push-v3 pixels: env, rendering, replay, updates),
before and after a change, fp32 and bf16, in the same run of this script.

Each setting is one ``pvrw train`` process on a code tree (``--before DIR``: another checkout of pvrw, e.g. the main
branch before the speed-ups; the tree of this script is "after"); its frames/s are read from its ``metrics.csv``
between the first and the last training episode (100 agent steps each; the first ends when updates start), so
start-up, the seed phase and the final evaluation are left out. The settings run in turn, ``--rounds`` times, and
the median is reported. No evaluation during training, no video, no checkpoint.

    python benchmarks/bench_drm_train_e2e.py --before /path/to/pvrw-main [--frames 600] [--threads 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

AFTER = Path(__file__).resolve().parents[1]


def training_rate(tree: Path, precision: str, args: argparse.Namespace) -> float:
    """Frames/s of one run between its first and last training episode (rows of its metrics.csv): the seed phase,
    start-up and the final evaluation are left out."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-c", "from pvrw.cli import main; main()", "train", "--env", "metaworld/push-v3"]
        command += ["--resolution", str(args.resolution), "--frames", str(args.frames), "--device", "cpu"]
        command += ["--learning-starts", str(args.learning_starts), "--threads", str(args.threads)]
        command += ["--eval-every", "0", "--eval-episodes", "1", "--checkpoint-every", "0", "--no-video"]
        command += ["--set", "save_replay_buffer=false", "--set", f"env_kwargs.max_episode_steps={args.episode_steps}"]
        command += ["--buffer-size", str(args.frames), "--out", str(Path(tmp) / "run")]
        if precision != "fp32":
            command += ["--set", f"precision={precision}"]
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
        # run outside any checkout: `python -c` puts the working directory first on sys.path
        where = [sys.executable, "-c", "import pvrw; print(pvrw.__file__)"]
        imported = subprocess.run(where, env=env, cwd=tmp, capture_output=True, text=True, check=True).stdout.strip()
        if not Path(imported).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"the {tree} setting would import pvrw from {imported}; is pvrw installed non-editable?")
        done = subprocess.run(command, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"pvrw train on {tree} failed:\n{done.stderr[-2000:]}")
        with open(Path(tmp) / "run" / "metrics.csv") as f:
            rows = [row for row in csv.DictReader(f) if row["kind"] == "train"]
        first, last = rows[0], rows[-1]
        return (int(last["frames"]) - int(first["frames"])) / (float(last["wall_time"]) - float(first["wall_time"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another pvrw checkout to compare with (fp32 only)")
    parser.add_argument("--frames", type=int, default=600, help="budget in env frames (action repeat 2)")
    parser.add_argument("--learning-starts", type=int, default=100, help="agent steps before the first update")
    parser.add_argument("--episode-steps", type=int, default=100, help="agent steps per training episode")
    parser.add_argument("--resolution", type=int, default=84)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--precision", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = parser.parse_args()
    settings = [("before", args.before, "fp32")] if args.before else []
    settings += [("after", AFTER, p) for p in args.precision]
    rates: dict[str, list[float]] = {f"{name} {p}": [] for name, _, p in settings}
    for _ in range(args.rounds):
        for name, tree, precision in settings:
            rates[f"{name} {precision}"].append(training_rate(tree, precision, args))
    updates = (args.frames // 2 - args.learning_starts) // 2
    print(
        f"pvrw train DrM metaworld/push-v3 {args.resolution} px, {args.frames} frames ({args.learning_starts} seed "
        f"steps, ~{updates} updates at batch 256), {args.threads} threads, median of {args.rounds} round(s); frames/s "
        "from the first to the last training episode"
    )
    base = statistics.median(next(iter(rates.values())))
    print("| code | precision | frames / s | speed-up |")
    print("|---|---|---:|---:|")
    for label, values in rates.items():
        name, precision = label.split()
        print(f"| {name} | {precision} | {statistics.median(values):.2f} | {statistics.median(values) / base:.2f}x |")


if __name__ == "__main__":
    main()
