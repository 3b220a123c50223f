"""``pvrw params``: trainable parameters and replay memory of every study variant."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from pvrw.cli._common import user_errors

#: (label, pvr name or None for pixels) of the study's variants
STUDY_VARIANTS: tuple[tuple[str, str | None], ...] = (
    ("DrM pixels", None),
    ("PIE-G ResNet18", "resnet18"),
    ("DINOv2", "dinov2"),
    ("DINOv2 reg", "dinov2_reg"),
    ("VC-1", "vc1"),
)


def variant_rows(
    resolutions: list[int],
    frame_stack: int = 3,
    action_dim: int = 4,
    variant: str = "drm",
    buffer_size: int = 1_000_000,
    storage_dtype: str | None = None,
    feature_dim: int = 50,
    hidden_dim: int = 1024,
    tokens: str | None = None,
    layers: str | None = None,
    finetune: str | None = None,
) -> list[dict[str, Any]]:
    """One row per (study variant, resolution): observation shape, trainable parameters, replay memory.

    Parameter counts come from :func:`pvrw.drm.trainable_parameter_counts` (networks built on the meta device),
    per-frame feature shapes from the backbone registry, memory from :func:`pvrw.drm.replay_memory.replay_memory_report`.

    :param tokens: ViT readout of the ViT rows (``mean``, ``patches``...; see :mod:`pvrw.backbones.readouts`).
    :param layers: ViT blocks read (``"-1,-2,-3,-4"``).
    :param finetune: count the PVR rows as fine-tuned inside DrM (:mod:`pvrw.drm.finetune`): pixels in the replay,
        the encoder column = head + trainable backbone parameters, plus ``backbone_trainable`` / ``backbone_frozen``;
        a backbone the mode does not fit (LoRA on the ResNet) is left out.
    """
    import numpy as np
    from gymnasium import spaces

    from pvrw.drm import VARIANT_DEFAULTS, trainable_parameter_counts
    from pvrw.drm.finetune import finetune_parameter_counts
    from pvrw.drm.replay_memory import replay_memory_report, storage_needs
    from pvrw.pvr_wrappers import get_backbone_cfg

    action_space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
    n_steps = VARIANT_DEFAULTS[variant]["n_steps"]
    rows, refused = [], []
    options: dict[str, Any] = {}
    for label, pvr in STUDY_VARIANTS:
        for resolution in resolutions:
            if pvr is None:
                policy, dtype = "CnnPolicy", None
                space = spaces.Box(0, 255, (3 * frame_stack, resolution, resolution), np.uint8)
            else:
                cfg = get_backbone_cfg(pvr)
                options = {"tokens": tokens, "layers": layers} if "tokens" in cfg.options else {}
                try:
                    options = cfg.resolve_options(**options)
                except ValueError as err:  # a readout this backbone has not (cls+registers without registers)
                    refused.append(str(err))
                    continue
                shape = tuple(cfg.output_shape(resolution, **options))
                policy = "MlpPolicy" if len(shape) == 1 else (
                    "PatchPolicy" if options.get("tokens") == "patches" else "PiegPolicy")
                dtype = np.dtype(storage_dtype) if storage_dtype else None
                space = spaces.Box(-np.inf, np.inf, (frame_stack, *shape), np.float32)
            backbone_counts = {}
            if finetune and pvr is not None:
                try:
                    backbone_counts = finetune_parameter_counts(pvr, resolution, finetune, **options)
                except ValueError as err:  # e.g. LoRA on the ResNet trunk: not a variant
                    refused.append(str(err))
                    continue
            counts = trainable_parameter_counts(
                space, action_dim, policy=policy, variant=variant, feature_dim=feature_dim, hidden_dim=hidden_dim
            )
            if backbone_counts:  # the head above; pixels go into the replay
                counts["encoder"] += backbone_counts["backbone_trainable"]
                counts["total"] += backbone_counts["backbone_trainable"]
                policy, dtype = "FinetunePolicy", None
                space = spaces.Box(0, 255, (3 * frame_stack, resolution, resolution), np.uint8)
            memory = replay_memory_report(
                space, action_space, n_steps, buffer_size, storage_dtype=dtype, label=f"{label} @{resolution}"
            )
            rows.append(
                {
                    "variant": label,
                    "pvr": pvr or "none",
                    "resolution": resolution,
                    "policy": policy,
                    "observation_shape": list(space.shape),
                    "params": counts,
                    "replay_storage_dtype": memory.storage_dtype,
                    "replay_bytes_per_transition": memory.drm_bytes_per_transition,
                    "replay_gb": memory.drm_total_bytes / 1e9,
                    "sb3_replay_gb": memory.sb3_total_bytes / 1e9,
                    "reference_replay_gb": memory.reference_total_bytes / 1e9,
                    # RAM and disk of each replay_storage (runs: a checkpoint every 100,000 frames = 50,000 steps)
                    "replay_needs_gb": {
                        storage: {where: size / 1e9 for where, size in needs.items()}
                        for storage, needs in storage_needs(memory).items()
                    },
                    "backbone_options": {k: v for k, v in options.items()} if pvr else {},
                    "finetune": finetune if backbone_counts else None,
                    **backbone_counts,
                }
            )
    asked = tokens or layers or finetune
    if asked and not any(r["pvr"] != "none" and (finetune or "tokens" in r["backbone_options"]) for r in rows):
        raise ValueError(f"no study backbone takes these options: {refused[-1] if refused else asked}")
    return rows


def _env_action_dim(env_id: str) -> int:
    from pvrw.runs.config import RunConfig
    from pvrw.runs.envs import make_run_env

    env = make_run_env(RunConfig(env=env_id, resolution=64, frame_stack=1, video=False))
    try:
        return int(env.action_space.shape[0])
    finally:
        env.close()


@click.command("params", short_help="Trainable parameters and replay memory.")
@click.option("--resolution", "resolutions", default="112,224", show_default=True, help="Comma-separated resolutions.")
@click.option("--frame-stack", type=click.IntRange(min=1), default=3, show_default=True, help="Frames per observation.")
@click.option("--action-dim", type=click.IntRange(min=1), default=None,
              help="Action dimension. [default: the --env's, 4 for Meta-World]")  # fmt: skip
@click.option("--env", default=None, help="Task whose action dimension is used (built once to read it), e.g. "
              "metaworld/push-v3. [default: none, Meta-World's 4]")  # fmt: skip
@click.option("--variant", type=click.Choice(["drm", "drm_mw", "drqv2"]), default="drm", show_default=True,
              help="DrM variant (heads and n-step differ; drqv2 has no value net).")  # fmt: skip
@click.option("--feature-dim", type=click.IntRange(min=1), default=50, show_default=True, help="DrM trunk output size.")
@click.option("--hidden-dim", type=click.IntRange(min=1), default=1024, show_default=True, help="DrM head width.")
@click.option("--buffer-size", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Replay capacity (transitions) the memory column is given for.")  # fmt: skip
@click.option("--float16", "float16", is_flag=True, help="Store PVR embeddings as float16 in the replay buffer.")
@click.option("--tokens", default=None, help="ViT readout of the ViT rows: cls, cls+registers, mean, cls+mean, "
              "patches (PatchPolicy head). [default: each backbone's]")  # fmt: skip
@click.option("--layers", default=None, help="ViT blocks read, e.g. -1,-2,-3,-4. [default: the last]")
@click.option("--finetune", default=None, help="Count the PVR rows fine-tuned inside DrM: none, lastN, all, lora:R "
              "(pixels in the replay; backbone trainable/frozen columns). [default: frozen features]")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@user_errors
def params(
    resolutions: str,
    frame_stack: int,
    action_dim: int | None,
    env: str | None,
    variant: str,
    feature_dim: int,
    hidden_dim: int,
    buffer_size: int,
    float16: bool,
    tokens: str | None,
    layers: str | None,
    finetune: str | None,
    as_json: bool,
) -> None:
    """Trainable parameters of every study variant (DrM on pixels, PIE-G ResNet18, DINOv2, DINOv2 with registers,
    VC-1) at each resolution, and the replay memory a buffer of --buffer-size transitions needs.

    Frozen backbones are not trainable and not counted; the agent's encoder column is the DrQ-v2 CNN (pixels),
    the PIE-G head (ResNet18 maps) or nothing (CLS features). Memory is measured on buffers actually allocated
    (pvrw.drm.replay_memory): DrMReplayBuffer stores each frame once; SB3's ReplayBuffer stores obs and next_obs
    stacked.
    """
    try:
        res_list = [int(r) for r in resolutions.split(",") if r.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers, got {resolutions!r}", param_hint="--resolution"
        ) from None
    if action_dim is None:
        action_dim = _env_action_dim(env) if env else 4
    try:
        rows = variant_rows(res_list, frame_stack, action_dim, variant, buffer_size, "float16" if float16 else None,
                            feature_dim, hidden_dim, tokens, layers, finetune)
    except ValueError as err:
        raise click.BadParameter(f"{str(err).rstrip('.')}; see `pvrw backbones -v` for each one's options") from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = (
        f"{'variant':<16}{'res':>5}  {'observation':<16}{'encoder':>12}{'actor':>12}{'critic':>12}{'value':>12}"
        f"{'total':>13}{'replay GB':>11}{'SB3 GB':>9}{'B/transition':>14}"
    ) + (f"{'bb trainable':>14}{'bb frozen':>13}" if finetune else "")
    click.echo(
        f"DrM ({variant}) trainable parameters, {action_dim}-d actions, frame stack {frame_stack}; "
        f"replay memory for {buffer_size:,} transitions"
    )
    click.echo(header)
    click.echo("-" * len(header))
    for r in rows:
        p = r["params"]
        shape = "x".join(map(str, r["observation_shape"]))
        click.echo(
            f"{r['variant']:<16}{r['resolution']:>5}  {shape:<16}{p['encoder']:>12,}{p['actor']:>12,}{p['critic']:>12,}"
            f"{p['value_net']:>12,}{p['total']:>13,}{r['replay_gb']:>11.2f}{r['sb3_replay_gb']:>9.2f}"
            f"{r['replay_bytes_per_transition']:>14,.0f}"
            + (f"{r.get('backbone_trainable', 0):>14,}{r.get('backbone_frozen', 0):>13,}" if finetune else "")
        )
    click.echo(
        f"(replay: DrMReplayBuffer, {rows[0]['replay_storage_dtype'] if rows else ''} pixels / "
        f"{'float16' if float16 else 'float32'} embeddings; SB3: ReplayBuffer with stacked obs and next_obs)"
    )
    _needs_table(rows, buffer_size)


def _needs_table(rows: list[dict[str, Any]], buffer_size: int) -> None:
    """RAM and disk of the replay buffer of each row, with each ``replay_storage`` of a run."""
    click.echo(f"\nreplay buffer of a run, {buffer_size:,} transitions, GB (--replay-storage):")
    header = f"{'variant':<16}{'res':>5}{'memory: RAM':>14}{'checkpoints':>13}{'disk: files':>14}{'RAM':>6}"
    click.echo(header)
    click.echo("-" * len(header))
    for r in rows:
        memory, disk = r["replay_needs_gb"]["memory"], r["replay_needs_gb"]["disk"]
        click.echo(
            f"{r['variant']:<16}{r['resolution']:>5}{memory['ram']:>14.2f}{memory['disk']:>13.2f}"
            f"{disk['disk']:>14.2f}{'-':>6}"
        )
    click.echo(textwrap.fill(
        "(memory: the arrays in RAM, and a checkpoint pickles them: twice on disk while a new checkpoint is written. "
        "disk (the default of runs): files in RUN_DIR/replay/ plus undo journals of two checkpoint intervals "
        "(100,000 frames each); no RAM for the buffer: the page cache holds what sampling touches, and the kernel "
        "takes it back under pressure. A run checks its disk (or RAM) before it starts.)",
        width=len(header) + 20,
    ))
