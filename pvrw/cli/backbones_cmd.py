"""``pvrw backbones`` (the registry and where each backbone's weights are) and ``pvrw download NAME...``."""

from __future__ import annotations

import click


@click.command(short_help="List backbones, their output shapes and weights.")
@click.argument("filter", required=False, default="")
@click.option(
    "--resolution",
    "-r",
    type=int,
    multiple=True,
    help="Sides to show output shapes for (default: the study's 112 and 224). Repeatable.",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Show options, weight sources and, for missing weights, every place looked at.",
)
def backbones(filter: str, resolution: tuple[int, ...], verbose: bool) -> None:
    """List registered backbones, their output shapes, normalisation, licence and weight status.

    FILTER is a substring or a wildcard pattern (e.g. 'dino*'). Weights are looked up offline in $PVRW_WEIGHTS_DIR,
    the Hugging Face cache and the torch hub cache.
    """
    from pvrw.backbones.registry import get_backbone_cfg, list_backbones, weights_status

    names = list_backbones(filter)
    if not names:
        raise click.ClickException(f"No backbone matches {filter!r}; known: {', '.join(list_backbones())}.")
    for name in names:
        cfg = get_backbone_cfg(name)
        sides = resolution or cfg.study_resolutions
        shapes = []
        for side in sides:
            try:
                shapes.append(f"{side}: {cfg.output_shape(cfg.check_resolution(side), **cfg.resolve_options())}")
            except ValueError:
                shapes.append(f"{side}: not allowed (side must be {cfg.side_rule})")
        path, problem = weights_status(name)
        status = f"found: {path}" if path else ("own weights" if not cfg.requires_weights else "MISSING")
        click.echo(f"{name:<12} {cfg.description}")
        click.echo(f"  output   {'; '.join(shapes)}")
        click.echo(f"  input    {cfg.normalisation}, side {cfg.side_rule}")
        click.echo(f"  licence  {cfg.weights.licence} ({cfg.weights.size})")
        click.echo(f"  weights  {status}")
        if "tokens" in cfg.options:  # a ViT: its readouts, and what fine-tuning can train
            click.echo(f"  readout  tokens={'|'.join(cfg.options['tokens'])}; layers=last|-1,-2,... (several blocks)")
        click.echo(f"  finetune none|lastN|all{'|lora:R' if 'tokens' in cfg.options else ''} (pvrw train --finetune)")
        if verbose:
            click.echo(f"  arch     {cfg.architecture}")
            for option, values in cfg.options.items():
                shown = "INDICES" if option in cfg.option_parsers else "|".join(map(str, values))
                click.echo(f"  option   {option}={shown}: {cfg.option_doc.get(option, '')}")
            if problem and cfg.requires_weights:
                click.echo("  " + problem.replace("\n", "\n  "))
    click.echo(
        "Missing weights: `pvrw download NAME` on a machine with network, or copy the file into "
        "$PVRW_WEIGHTS_DIR (`pvrw backbones -v` shows where each was looked for)."
    )


@click.command(short_help="Download backbone weights (needs network).")
@click.argument("names", nargs=-1, required=True)
def download(names: tuple[str, ...]) -> None:
    """Download the weights of backbone NAMES into the Hugging Face (or torch hub) cache.

    Needs network access. On an offline machine, run this elsewhere and copy the cache (~/.cache/huggingface/hub) or
    the weight file (into $PVRW_WEIGHTS_DIR). Mind the licences: VC-1 weights are CC-BY-NC-4.0 (non-commercial).
    """
    from pvrw.backbones.registry import get_backbone_cfg
    from pvrw.backbones.weights import WeightsNotFoundError, download_weights

    failed = []
    for name in names:
        try:
            cfg = get_backbone_cfg(name)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="NAMES") from None
        click.echo(f"{name}: downloading ({cfg.weights.size}, licence {cfg.weights.licence}) ...")
        try:
            click.echo(f"{name}: {download_weights(name, cfg.weights)}")
        except WeightsNotFoundError as err:
            click.echo(str(err), err=True)
            failed.append(name)
    if failed:
        raise click.ClickException(f"could not download: {', '.join(failed)}")
