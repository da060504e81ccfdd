"""``crx bank list|extract``: the concept bank that anchors ``--solver anchored`` maps."""

from __future__ import annotations

import click

from crx.cli.cmd_engine import batch_size_option, load_options
from crx.cli.context import json_option, registry
from crx.cli.progress import Reporter, quiet_option
from crx.cli.render import emit_json, emit_table


@click.group()
def bank() -> None:
    """The concept bank: generic contrast concepts (tense, topics, register, languages,
    antonyms...) shipped with crx, unrelated to any evaluated task. Extracted on two models,
    they anchor concept-anchored maps (`crx fit --solver anchored`).

    \b
    Example:
      crx bank list
      crx bank extract --model smollm2-135m-instruct
    """


@bank.command("list")
@json_option
def list_bank(as_json: bool) -> None:
    """List the bank's concepts: name (registered as bank.NAME), group and what it contrasts.

    \b
    Example:
      crx bank list
      crx bank list --json
    """
    entries = registry().bank()
    if as_json:
        emit_json(
            [
                {
                    "name": e.name,
                    "concept": e.concept,
                    "group": e.group,
                    "description": e.description,
                }
                for e in entries
            ]
        )
        return
    emit_table(
        ["concept", "group", "description"],
        [(e.concept, e.group, e.description) for e in entries],
        "the bank is empty",
    )


@bank.command("extract")
@click.option("--model", required=True, help="Registered model to extract the bank on.")
@click.option(
    "--concept",
    "names",
    multiple=True,
    help="Only this bank concept (NAME or bank.NAME; repeatable; default all).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N bank concepts.")
@click.option(
    "--template",
    help="Put each text in this prompt ({text} marks where; default the text alone), e.g. the "
    "template of the concepts the anchored maps will carry. Another template registers another "
    "version of each bank concept.",
)
@click.option(
    "--pairs",
    type=click.IntRange(min=1),
    help="Only each concept's first N contrast pairs (of 24; a version of its own): a bank "
    "that extracts in N/24 of the time, as `crx demo` does with 8.",
)
@batch_size_option
@load_options
@click.option("--force", is_flag=True, help="Extract again even where a vector exists.")
@quiet_option
@json_option
def extract_bank(
    model: str,
    names: tuple[str, ...],
    limit: int | None,
    template: str | None,
    pairs: int | None,
    batch_size: int,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Register the bank's concepts and extract each on MODEL (the model loads once).

    Concepts already extracted on MODEL are reused, so a second run costs nothing. Progress
    goes to stderr, counting concepts.

    \b
    Example:
      crx bank extract --model smollm2-135m-instruct
      crx bank extract --model gemma3-270m --limit 25 --json
      crx bank extract --model gemma3-270m --pairs 8
      crx bank extract --model gemma3-270m \\
          --template $'Scenario: {text}\\nThe emotion of the above scenario is'
    """
    progress = Reporter(quiet=quiet)
    results = registry().extract_bank(
        model,
        names=list(names) or None,
        template=template,
        pairs=pairs,
        limit=limit,
        batch_size=batch_size,
        force=force,
        progress=progress,
    )
    progress.finish()
    created = sum(1 for _, new in results if new)
    if as_json:
        emit_json(
            {
                "model": model,
                "extracted": created,
                "reused": len(results) - created,
                "items": [v for v, _ in results],
            }
        )
        return
    click.echo(
        f"{len(results)} bank concepts on {model}: {created} extracted, "
        f"{len(results) - created} already there"
    )
