"""DrM updates per second with a fine-tuned backbone (FinetunePolicy) against the frozen-feature path.

For one registered backbone (random weights: speed does not depend on them), frame stack 3, 4 actions: the frozen
path (features embedded once when collected; the update sees only the stored features: MlpPolicy on CLS, PiegPolicy
on ResNet maps) and FinetunePolicy on stored images with ``finetune`` = none (backbone forward on every sampled
image, no backbone gradients), lastN, lora:R and all. Each row fills a replay with random transitions, runs one
warm-up update, then times ``DrM.train`` (sampling + the whole DrM update). Trainable parameters include the
backbone's trainable part.

    python benchmarks/bench_finetune.py [--backbone dinov2] [--resolution 56] [--batch 32] [--updates 2]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch as th
from bench_drm_updates import RandomFrames
from gymnasium.wrappers import FrameStackObservation
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

from pvrw.backbones import RandomWeightsWarning, create_backbone
from pvrw.drm import DrM, trainable_parameter_counts

warnings.simplefilter("ignore", RandomWeightsWarning)


def bench(mode: str, args: argparse.Namespace) -> dict:
    kwargs = dict(learning_starts=args.fill, buffer_size=args.fill + 10, seed=0, device="cpu")
    if mode == "frozen features":
        shape = create_backbone(args.backbone, weights="random", resolution=args.resolution).output_shape
        env = FrameStackObservation(RandomFrames(shape, pixels=False), stack_size=3)
        model = DrM("PiegPolicy" if len(shape) == 3 else "MlpPolicy", env, **kwargs)
        backbone = {"backbone_trainable": 0}
    else:
        side = args.resolution
        env = VecFrameStack(DummyVecEnv([lambda: RandomFrames((side, side, 3), pixels=True)]), n_stack=3)
        extractor = dict(backbone=args.backbone, weights="random", finetune=mode)
        model = DrM("FinetunePolicy", env, policy_kwargs=dict(features_extractor_kwargs=extractor), **kwargs)
        backbone = model.policy.features_extractor.parameter_counts()
    model.learn(args.fill)  # random actions only: fills the buffer
    model.train(gradient_steps=1, batch_size=args.batch)  # warm-up
    start = time.perf_counter()
    model.train(gradient_steps=args.updates, batch_size=args.batch)
    seconds = (time.perf_counter() - start) / args.updates
    counts = trainable_parameter_counts(model)  # the encoder's trainable parameters, backbone part included
    return dict(mode=mode, obs="x".join(map(str, model.observation_space.shape)), params=counts["total"],
                backbone=backbone["backbone_trainable"], ms=1000 * seconds, ups=1 / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dinov2")
    parser.add_argument("--resolution", type=int, default=56)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--updates", type=int, default=2, help="timed updates per mode (after one warm-up)")
    parser.add_argument("--threads", type=int, default=th.get_num_threads())
    parser.add_argument("--fill", type=int, default=120, help="random transitions stored before timing")
    parser.add_argument("--modes", nargs="*", default=["frozen features", "none", "last2", "lora:8", "all"])
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    print(f"DrM updates, {args.backbone} @{args.resolution}px, batch {args.batch}, frame stack 3, {args.updates} timed "
          f"updates each, {args.threads} torch threads, CPU")
    rows = [bench(mode, args) for mode in args.modes]
    base = rows[0]["ups"]
    print(f"| finetune | observation | trainable params (backbone part) | ms / update | updates / s | vs {rows[0]['mode']} |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['obs']} | {r['params']:,} ({r['backbone']:,}) | {r['ms']:.0f} | {r['ups']:.3f} | "
              f"{r['ups'] / base:.3f}x |")


if __name__ == "__main__":
    main()
