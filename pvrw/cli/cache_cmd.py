"""``pvrw record``, ``pvrw extract`` and ``pvrw cache info|repair``: episode datasets and HDF5 feature files."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import click

from pvrw.cli._common import missing_weights_line


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Report user mistakes (bad files, names, shapes, missing weights) as one line, not a traceback."""
    from pvrw.feature_cache._h5 import FeatureCacheError

    try:
        yield
    except click.ClickException:
        raise
    except (FeatureCacheError, ValueError, OSError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        if type(error).__name__ == "WeightsNotFoundError":  # its full text lists every place looked at
            message = missing_weights_line(str(error))
        raise click.ClickException(str(message)) from None


def _parse_weights(values: tuple[str, ...], names: list[str]) -> dict[str, str | None]:
    """``--weights PATH|random`` (one backbone, or the same for all) or ``--weights NAME=PATH`` per backbone."""
    weights: dict[str, str | None] = {name: None for name in names}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in weights:
            weights[name] = path
        elif sep and not os.path.exists(value):
            raise click.BadParameter(
                f"{name!r} is not one of the --pvr backbones ({', '.join(names)})", param_hint="--weights"
            )
        else:
            weights = {n: value for n in names}
    return weights


@click.command(short_help="Record policy episodes to an HDF5 dataset.")
@click.option("--env", "env_id", required=True, help="Environment id, e.g. metaworld/push-v3 (see pvrw.make_env).")
@click.option(
    "--policy",
    default="random",
    show_default=True,
    help="'random', 'expert' (Meta-World scripted expert) or the path of a trained Stable-Baselines3/DrM model zip.",
)
@click.option("--episodes", default=10, show_default=True, type=click.IntRange(min=1), help="Episodes to record.")
@click.option("--resolution", default=112, show_default=True, type=click.IntRange(min=8), help="Frame side in pixels.")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Episode dataset (.h5); appended to if it exists."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Episode e is reset with seed + e.")
@click.option(
    "--max-episode-steps", default=250, show_default=True, type=click.IntRange(min=1), help="Agent steps per episode."
)
@click.option(
    "--action-repeat", default=2, show_default=True, type=click.IntRange(min=1), help="Simulator steps per agent step."
)
@click.option(
    "--render-quality",
    type=click.Choice(["full", "fast"]),
    default="full",
    show_default=True,
    help="MuJoCo rendering: 'full' (reference look) or 'fast' (no shadows/MSAA; ~9x faster on CPU).",
)
@click.option(
    "--algo", default=None, help="Algorithm class of the model zip (e.g. SAC, DrM) when it cannot be inferred."
)
def record(env_id, policy, episodes, resolution, out, seed, max_episode_steps, action_repeat, render_quality, algo):
    """Record frames, actions, rewards, dones and success of a policy to an HDF5 episode dataset."""
    with _user_errors():
        from pvrw.envs.factory import make_env
        from pvrw.feature_cache.recording import (
            make_policy,
            record_episodes,
        )
        from pvrw.runs.models import load_sb3_model

        model, frame_stack = None, 1
        if policy not in ("random", "expert"):
            if not os.path.isfile(policy):
                raise click.BadParameter(
                    f"{policy!r} is neither 'random', 'expert' nor a model zip file", param_hint="--policy"
                )
            algorithm = _algorithm_class(algo) if algo else None
            model = load_sb3_model(policy, algorithm)
            shape = model.observation_space.shape
            if len(shape) != 3 or shape[0] % 3:
                raise click.ClickException(
                    f"the model at {policy} expects observations {shape}; recording needs a pixel policy (3k,H,W)"
                )
            frame_stack, resolution = shape[0] // 3, shape[-1]
        env = make_env(
            env_id,
            resolution=resolution,
            frame_stack=frame_stack,
            action_repeat=action_repeat,
            seed=seed,
            render_quality=render_quality,
            max_episode_steps=max_episode_steps,
        )
        try:
            fn = make_policy("model" if model is not None else policy, env, seed=seed, model=model)
            summary = record_episodes(
                env,
                fn,
                episodes,
                out,
                seed=seed,
                progress=True,
                attrs={"env_id": env_id, "policy": policy, "resolution": resolution, "action_repeat": action_repeat},
            )
        finally:
            env.close()
    click.echo(
        f"recorded {summary['episodes']} episodes to {out}: mean return {summary['mean_return']:.2f},"
        f" success rate {summary['success_rate']:.2f}"
    )


def _algorithm_class(name: str) -> type:
    if name.lower() == "drm":
        from pvrw.drm import DrM

        return DrM
    import stable_baselines3

    for attr in dir(stable_baselines3):
        if attr.lower() == name.lower():
            return getattr(stable_baselines3, attr)
    raise click.BadParameter(f"unknown algorithm {name!r}", param_hint="--algo")


@click.command(short_help="Extract features of recorded frames.")
@click.option("--pvr", required=True, help="Backbone name(s), comma-separated (see `pvrw backbones`).")
@click.option(
    "--frames",
    "frames_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Episode dataset from `pvrw record`.",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Feature file (.h5); an interrupted run resumes."
)
@click.option(
    "--weights",
    multiple=True,
    help="Weights: PATH or 'random' (all backbones), or NAME=PATH per backbone; repeatable. Default: resolved offline.",
)
@click.option(
    "--batch-size",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Frames per forward pass and per committed append.",
)
@click.option(
    "--resolution", default=None, type=click.IntRange(min=8), help="Backbone input side; default: the frames' side."
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Storage dtype of the features (computation stays float32).",
)
@click.option(
    "--compression",
    type=click.Choice(["auto", "lzf", "gzip", "none"]),
    default="auto",
    show_default=True,
    help="HDF5 compression of new feature sets; auto: lzf for rows up to 16 KiB, none for large maps (resnet18),"
    " where lzf costs ~20% extraction time for ~28% smaller files.",
)
@click.option("--device", default="cpu", show_default=True, help="torch device for the backbones.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help='ray: forward passes fanned out over Ray workers (one backbone replica each); this process writes'
                   ' the file (pip install "pvrw[ray]").')  # fmt: skip
@click.option(
    "--address", default=None, help="--backend ray: 'auto' or ray://HOST:PORT. [default: a new local Ray instance]"
)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="--backend ray: number of workers. [default: as many as the free CPUs (or GPUs) allow]")  # fmt: skip
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              help="--backend ray: GPUs per worker; > 0 runs the replicas on CUDA.")  # fmt: skip
def extract(pvr, frames_path, out, weights, batch_size, resolution, dtype, compression, device, backend, address,
            workers, gpus_per_worker):  # fmt: skip
    """Extract features of every recorded frame for one or more backbones (resumable)."""
    with _user_errors():
        from pvrw.backbones.registry import create_backbone
        from pvrw.feature_cache.extraction import extract_features
        from pvrw.feature_cache.recording import EpisodeDataset

        names = [n.strip() for n in pvr.split(",") if n.strip()]
        if not names:
            raise click.BadParameter("give at least one backbone name", param_hint="--pvr")
        weight_of = _parse_weights(weights, names)
        if resolution is None:
            with EpisodeDataset(frames_path) as dataset:
                resolution = int(dataset.frame_shape[-1])
        backbones = [create_backbone(n, weights=weight_of[n], resolution=resolution, device=device) for n in names]
        options = {"batch_size": batch_size, "dtype": dtype, "progress": True,
                   "compression": None if compression == "none" else compression}  # fmt: skip
        if backend == "ray":
            from pvrw.runs.ray_backend import RayNotInstalledError
            from pvrw.runs.ray_extract import extract_features_ray

            try:
                report = extract_features_ray(frames_path, backbones, out, address=address, num_workers=workers,
                                              gpus_per_worker=gpus_per_worker, **options)  # fmt: skip
            except RayNotInstalledError as err:
                raise click.ClickException(str(err)) from None
        elif address is not None or workers is not None or gpus_per_worker:
            raise click.UsageError("--address, --workers and --gpus-per-worker need --backend ray")
        else:
            report = extract_features(frames_path, backbones, out, **options)
    for name, r in report.items():
        click.echo(
            f"{name}: {r['extracted']} frames extracted, {r['done_before']} already there, {r['total']} total -> {out}"
        )


@click.group(short_help="Inspect and repair pvrw HDF5 files.")
def cache() -> None:
    """Inspect and repair pvrw HDF5 files (feature files and episode datasets)."""


@cache.command(short_help="Show what a pvrw HDF5 file holds.")
@click.argument("file", type=click.Path(dir_okay=False))
def info(file):
    """Show what FILE holds: feature sets with their backbone, weights and sizes, or recorded episodes."""
    with _user_errors():
        if _file_kind(file) == "pvrw.episodes":
            _info_episodes(file)
        else:
            _info_features(file)  # also refuses foreign files with a clear message


def _file_kind(path: str) -> str:
    from pvrw.feature_cache import _h5

    if not os.path.exists(path):
        raise click.ClickException(f"{path}: no such file")
    return _h5.file_format(path)


def _info_features(path: str) -> None:
    from pvrw.feature_cache.store import FeatureStore

    with FeatureStore(path, "r") as store:
        size = os.path.getsize(path)
        click.echo(f"{path}: pvrw feature file, {size / 2**20:.1f} MiB, {store.num_episodes()} episodes indexed")
        if store.num_episodes():
            click.echo(f"  source dataset uuid {store.source_uuid()}")
        names = store.set_names()
        if not names:
            click.echo("  no feature sets")
        for name in names:
            fs = store.get_set(name)
            s = fs.spec
            click.echo(
                f"  set {name}: {len(fs)} rows x {s.output_shape} {s.dtype}; backbone {s.backbone}, resolution"
                f" {s.resolution}, weights {s.fingerprint}"
            )
            click.echo(f"    preprocessing: {s.preprocessing}")


def _info_episodes(path: str) -> None:
    from pvrw.feature_cache.recording import EpisodeDataset

    with EpisodeDataset(path) as ds:
        attrs = ds.attrs
        table = ds.episode_table()
        n = ds.num_episodes
        click.echo(
            f"{path}: pvrw episode dataset, env {attrs.get('env_id', '?')}, policy {attrs.get('policy', '?')},"
            f" {n} episodes, {ds.num_steps} steps, {ds.num_frames} frames of {ds.frame_shape}"
        )
        if n:
            click.echo(
                f"  mean return {table['return'].mean():.2f}, success rate {table['success'].mean():.2f},"
                f" uuid {ds.uuid}"
            )


@cache.command(short_help="Recover a file whose writer was killed.")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
def repair(file):
    """Recover FILE after its writer was killed: keeps every committed row and makes it writable again."""
    with _user_errors():
        from pvrw.feature_cache import _h5

        kind = _file_kind(file)
        if kind not in ("pvrw.features", "pvrw.episodes"):
            raise click.ClickException(f"{file} is not a pvrw feature file or episode dataset; nothing to repair")
        _h5.open_for_writing(file, kind).close()
    click.echo(f"{file}: ok")
