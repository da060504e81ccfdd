"""``crx export vector``."""

from __future__ import annotations

import click

from crx.cli.context import json_option, registry
from crx.cli.render import emit_json


@click.group()
def export() -> None:
    """Write registry objects out for other tools.

    \b
    Example:
      crx export vector 3 --format gguf -o happiness.gguf
    """


@export.command("vector")
@click.argument("ref")
@click.option("--model", default=None, help="The model, when REF is a concept (NAME[@V|@ALIAS]).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["safetensors", "gguf"]),
    default="safetensors",
    show_default=True,
    help="safetensors, or GGUF in llama.cpp's control-vector layout.",
)
@click.option(
    "--layer",
    "layers",
    type=click.IntRange(min=0),
    multiple=True,
    help="A layer to export (repeatable; default: the best evaluation's).",
)
@click.option("--alpha", type=float, default=None, help="α (× the layer's mean residual norm).")
@click.option("--absolute", is_flag=True, help="--alpha is absolute, not × the residual norm.")
@click.option(
    "--from-evaluation",
    type=click.IntRange(min=1),
    default=None,
    help="Export the layer and α of this evaluation (its id in `crx list evaluations`).",
)
@click.option("--raw", is_flag=True, help="The stored vector: every layer, strength 1.")
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(dir_okay=False),
    help="File to write (default: CONCEPT-V-MODEL-ID.FORMAT here).",
)
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
@json_option
def export_vector(
    ref: str,
    model: str | None,
    fmt: str,
    layers: tuple[int, ...],
    alpha: float | None,
    absolute: bool,
    from_evaluation: int | None,
    raw: bool,
    output: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Export vector REF (its id in `crx list vectors`, or CONCEPT[@V|@ALIAS] with --model)
    as it was evaluated: the chosen layers only, each multiplied by its effective strength
    (α × the layer's mean residual norm / |v|, or α with --absolute). With no option: the
    layer and α of the vector's best recorded evaluation, else the raw vector; it says which.

    GGUF files load in llama.cpp and repeng; the command prints the llama.cpp flags
    (--control-vector-scaled FILE 1: the strength is in the file). llama.cpp never steers
    block 0, so that row is left out of a GGUF, and the output says so.

    \b
    Example:
      crx export vector 3 --format gguf -o happiness.gguf
      crx export vector happiness@prod --model gemma3-270m --format gguf --layer 13 --alpha 0.2
      crx export vector 3 --from-evaluation 17 --format gguf
      crx export vector 3 --raw -o raw.safetensors
    """
    report = registry().export_vector(
        ref,
        fmt,
        output,
        model=model,
        layers=list(layers) or None,
        alpha=alpha,
        normalize=False if absolute else None,
        from_evaluation=from_evaluation,
        raw=raw,
        force=force,
    )
    if as_json:
        emit_json(report)
        return
    for line in report.lines():
        click.echo(line)
