"""``crx export vector``."""

from __future__ import annotations

import click

from crx.cli.context import registry


@click.group()
def export() -> None:
    """Write registry objects out for other tools.

    \b
    Example:
      crx export vector 3 --format gguf -o happiness.gguf
    """


@export.command("vector")
@click.argument("ref", type=int)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["safetensors", "gguf"]),
    default="safetensors",
    show_default=True,
    help="safetensors, or GGUF in llama.cpp's control-vector layout.",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="File to write."
)
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
def export_vector(ref: int, fmt: str, output: str, force: bool) -> None:
    """Export vector REF (its id in `crx list vectors`) to a file.

    GGUF files load in llama.cpp (--control-vector) and repeng; llama.cpp ignores block 0, so
    that row is not written.

    \b
    Example:
      crx export vector 3 --format gguf -o happiness.gguf
    """
    path = registry().export_vector(ref, fmt, output, force=force)
    click.echo(f"wrote {path}")
