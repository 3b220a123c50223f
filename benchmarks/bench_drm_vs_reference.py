"""pvrw's DrM against the original DrM (XuGW-Kevin/DrM ``agents/drm.py``), side by side in one process.

Same shapes, hyper-parameters (``variant="drm"`` / ``cfgs/agent/drm.yaml``) and batch (256) on both sides; rounds
alternate (reference, then each pvrw setting) so that machine load hits all of them; a round times ``--updates``
updates of each. The reference runs ``DrMAgent.update`` on batches drawn from an in-memory numpy store (no DataLoader
workers); pvrw runs ``DrM.train`` (its replay sampling included). Inputs: pixels 84 and 112 px (frame stack 3; the
reference's hard-coded ``repr_dim`` is patched for 112) and 3 x 768 CLS features (``MlpPolicy``; the reference gets a
flattening stand-in encoder and no augmentation). The number that counts is the median ratio.

    python benchmarks/bench_drm_vs_reference.py --reference DIR [--inputs pixels@84 cls] [--rounds 5] [--updates 2]
        [--precision fp32 bf16] [--aug-method grid_sample index] [--malloc as-shipped] [--threads 2] [--device cpu]
        [--profile]

DIR (default: ``$PVRW_DRM_REFERENCE``) holds the original ``drm.py`` (or ``agents/drm.py``) and ``utils.py``: ``git
clone https://github.com/XuGW-Kevin/DrM`` (pvrw commits no reference code). ``--profile`` prints the top of a
``torch.profiler`` table (self CPU time) of each side first.

``--malloc`` (CPU): ``as-shipped`` (default) times each side as it runs in a process of its own: the reference with
glibc's malloc settings (restored before each of its rounds), pvrw with the settings its ``DrM.train`` applies
(``reuse_cpu_memory=True``, :mod:`pvrw._malloc`); ``kept`` gives the reference pvrw's settings too, and ``default``
takes them from pvrw (``reuse_cpu_memory=False``), so the two show what comes from the allocator and what from the
update itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch as th
from bench_drm_updates import make_env
from _drm_reference import load_reference, make_agent

from pvrw._malloc import keep_freed_memory, restore_default_malloc
from pvrw.drm import DrM

BATCH = 256
INPUTS = {"pixels@84": "CnnPolicy", "pixels@112": "CnnPolicy", "cls": "MlpPolicy"}


def reference_batches(obs_shape: tuple[int, ...], pixels: bool, fill: int, seed: int = 0):
    """Endless uniform batches ``(obs, action, reward, discount, next_obs)`` from random numpy arrays, as the
    reference's replay loader yields them."""
    rng = np.random.default_rng(seed)
    if pixels:
        store = rng.integers(0, 256, (fill + 1, *obs_shape), dtype=np.uint8)
    else:
        store = rng.standard_normal((fill + 1, *obs_shape), dtype=np.float32)
    actions = rng.uniform(-1, 1, (fill, 4)).astype(np.float32)
    rewards = rng.standard_normal((fill, 1)).astype(np.float32)
    discount = np.full((fill, 1), 0.99**3, np.float32)
    while True:
        idx = rng.integers(0, fill, BATCH)
        yield store[idx], actions[idx], rewards[idx], discount[idx], store[idx + 1]


def pvrw_model(name: str, fill: int, device: str, **kwargs: Any) -> DrM:
    model = DrM(
        INPUTS[name], make_env(name), learning_starts=fill, buffer_size=fill + 10, seed=0, device=device, **kwargs
    )
    model.learn(fill)  # random actions only: fills the buffer, no update yet
    return model


def timed(fn: Callable[[], None], device: str) -> float:
    if device.startswith("cuda"):
        th.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        th.cuda.synchronize()
    return time.perf_counter() - start


def profile(label: str, fn: Callable[[], None], rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if th.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        fn()
    print(f"\n--- profile: {label} ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))


def bench(name: str, args: argparse.Namespace, ref_module) -> list[dict[str, Any]]:
    pixels = INPUTS[name] == "CnnPolicy"
    settings: dict[str, dict[str, Any]] = {}
    for precision in args.precision:
        default_method = "index" if precision == "bf16" else "grid_sample"  # DrM's defaults
        for method in (args.aug_method or [default_method]) if pixels else [default_method]:
            label = precision if method == default_method or not pixels else f"{precision} {method}-shift"
            kwargs: dict[str, Any] = dict(precision=precision) if precision != "fp32" else {}
            if pixels:
                kwargs["policy_kwargs"] = dict(aug_method=method)
            settings[label] = kwargs
    if args.malloc == "default":
        settings = {label: dict(kw, reuse_cpu_memory=False) for label, kw in settings.items()}
    models = {label: pvrw_model(name, args.fill, args.device, **kw) for label, kw in settings.items()}
    first = next(iter(models.values()))
    obs_shape = first.observation_space.shape
    agent = make_agent(ref_module, obs_shape, 4, args.device)
    batches = reference_batches(obs_shape, pixels, args.fill)
    step = iter(range(2001, 10**9))

    def run_reference(n: int) -> Callable[[], None]:
        def updates() -> None:
            for _ in range(n):
                agent.update(batches, next(step))

        return updates

    def before_reference() -> None:
        if args.malloc == "kept":
            keep_freed_memory()
        else:
            restore_default_malloc()

    def run_pvrw(model: DrM, n: int) -> Callable[[], None]:
        return lambda: model.train(gradient_steps=n, batch_size=BATCH)

    before_reference()
    run_reference(1)()  # warm-up
    for model in models.values():
        run_pvrw(model, 1)()
    if args.profile:
        before_reference()
        profile(f"reference {name}", run_reference(args.updates), args.profile_rows)
        for label, model in models.items():
            profile(f"pvrw {label} {name}", run_pvrw(model, args.updates), args.profile_rows)
    times: dict[str, list[float]] = {"reference": [], **{label: [] for label in models}}
    for _ in range(args.rounds):
        before_reference()
        times["reference"].append(timed(run_reference(args.updates), args.device) / args.updates)
        for label, model in models.items():
            times[label].append(timed(run_pvrw(model, args.updates), args.device) / args.updates)
    shape = "x".join(map(str, obs_shape))
    rows = [dict(input=name, obs=shape, side="reference", ups=1.0 / statistics.median(times["reference"]), ratio=1.0)]
    for label in models:
        ratios = [r / p for r, p in zip(times["reference"], times[label])]
        rows.append(
            dict(input=name, obs=shape, side=f"pvrw {label}", ups=1.0 / statistics.median(times[label]),
                 ratio=statistics.median(ratios), low=min(ratios), high=max(ratios))
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reference = os.environ.get("PVRW_DRM_REFERENCE")
    parser.add_argument(
        "--reference",
        default=reference,
        required=reference is None,
        help="directory of the original drm.py (or agents/drm.py) and utils.py [default: $PVRW_DRM_REFERENCE]",
    )
    parser.add_argument("--inputs", nargs="*", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (the median is reported)")
    parser.add_argument("--updates", type=int, default=2, help="updates per side and round")
    parser.add_argument("--precision", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=th.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--fill", type=int, default=300, help="random transitions stored before timing")
    parser.add_argument(
        "--aug-method",
        nargs="*",
        default=None,
        choices=["grid_sample", "index"],
        help="pvrw's random shift on pixels (policy_kwargs aug_method; DrM's default: grid_sample in fp32, index in "
        "bf16): each precision runs with each method [default: DrM's]",
    )
    parser.add_argument(
        "--malloc",
        default="as-shipped",
        choices=["as-shipped", "kept", "default"],
        help="glibc malloc settings of each side (see above)",
    )
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per side first")
    parser.add_argument("--profile-rows", type=int, default=15)
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    th.manual_seed(0)
    ref_module = load_reference(args.reference)
    print(
        f"DrM updates/s at batch {BATCH}, original vs pvrw, {args.rounds} alternating rounds x {args.updates} updates, "
        f"device {args.device}, {args.threads} torch threads, malloc {args.malloc}"
    )
    rows = [row for name in args.inputs for row in bench(name, args, ref_module)]
    print("| input | observation | side | updates / s | vs reference (median) | min - max over rounds |")
    print("|---|---|---|---:|---:|---|")
    for row in rows:
        spread = f"{row['low']:.2f} - {row['high']:.2f}" if "low" in row else ""
        print(f"| {row['input']} | {row['obs']} | {row['side']} | {row['ups']:.2f} | {row['ratio']:.2f}x | {spread} |")


if __name__ == "__main__":
    main()
