"""``crx register model|concept|vector``."""

from __future__ import annotations

from typing import Any

import click

from crx.cli.context import json_option, registry
from crx.cli.render import describe_changes, emit_json
from crx.registry.errors import InvalidInput


def _parse_tags(values: tuple[str, ...]) -> dict[str, Any]:
    tags = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--tag")
        tags[key] = val
    return tags


@click.group()
def register() -> None:
    """Add models, concepts and vectors to the registry.

    \b
    Example:
      crx register model smollm2-135m-instruct --path ~/models/smollm2 --role aligned
      crx register concept sadness --emotion sadness
      crx register concept happiness --pairs pairs.json
      crx register vector happiness@1 --model smollm2-135m-instruct --file happy.safetensors
    """


@register.command("model")
@click.argument("name")
@click.option("--path", "path", required=True, help="Local model folder (or .gguf file) or hub id.")
@click.option("--gguf-file", help="GGUF file inside --path to read the model from.")
@click.option("--revision", help="Hub revision (branch, tag or commit).")
@click.option("--family", help="Model family, e.g. llama, qwen2, gemma3.")
@click.option("--role", type=click.Choice(["aligned", "base"]), help="Aligned (instruct) or base.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Free tag (repeatable).")
@json_option
def register_model(
    name: str,
    path: str,
    gguf_file: str | None,
    revision: str | None,
    family: str | None,
    role: str | None,
    tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Register a model by reading its config (weights are not loaded).

    Registering the same name again updates its row (the change is audited).

    \b
    Example:
      crx register model smollm2-135m-instruct --path ~/models/smollm2 --family llama --role aligned
      crx register model gemma3-270m --path ~/models/gemma --gguf-file gemma-3-270m.gguf --role base
    """
    result = registry().register_model(
        name,
        path,
        gguf_file=gguf_file,
        revision=revision,
        family=family,
        role=role,
        tags=_parse_tags(tags),
    )
    if as_json:
        emit_json(result)
        return
    m = result.record
    verb = "registered" if result.created else "updated" if result.changes else "up to date"
    changed = f": {describe_changes(result.changes)}" if result.changes else ""
    click.echo(
        f"{m.name}: {verb} ({m.model_type}, {m.n_layers} layers, d_model {m.d_model}){changed}"
    )


@register.command("concept")
@click.argument("name")
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(),
    help='Contrast pairs: JSON ([{"positive","negative"}] or {"pos":[],"neg":[]}), JSONL or CSV.',
)
@click.option(
    "--emotion",
    help="Instead of --pairs: crx's own RepE scenarios of this emotion (happiness, sadness, "
    "anger, fear, disgust or surprise), paired as `crx demo` does.",
)
@click.option("--description", help="What the concept is (stored on the concept).")
@click.option("--template", help="Prompt template with {text} where each scenario goes.")
@click.option(
    "--use", is_flag=True, help="Mark this version for use: `crx plan` plans it by default."
)
@json_option
def register_concept(
    name: str,
    pairs_file: str | None,
    emotion: str | None,
    description: str | None,
    template: str | None,
    use: bool,
    as_json: bool,
) -> None:
    """Register a new version of a concept from a file of contrast pairs (--pairs), or from
    the emotion scenarios that ship with crx (--emotion).

    Prints NAME@VERSION. Registering identical content again returns the existing version.
    --emotion builds the pairs `crx demo` registers (a scenario of the emotion against one of
    another emotion, training half only, in ConTrans' template), so it needs no file; name
    the concept after its emotion, since `crx evaluate` scores an emotion concept by its name.

    \b
    Example:
      crx register concept sadness --emotion sadness
      crx register concept honesty --pairs honesty.json --description "true vs false statements"
    """
    if (pairs_file is None) == (emotion is None):
        raise InvalidInput("give either --pairs FILE or --emotion EMOTION")
    if emotion is not None and template is not None:
        raise InvalidInput("--template goes with --pairs: --emotion uses ConTrans' template")
    reg = registry()
    if emotion is not None:
        result = reg.register_emotion(name, emotion, description=description, use=use)
    else:
        assert pairs_file is not None
        result = reg.register_concept(
            name, pairs_file, description=description, template=template, use=use
        )
    if as_json:
        emit_json(result)
        return
    suffix = "" if result.created else " (unchanged)"
    click.echo(f"{result.record.ref}{suffix}")


@register.command("vector")
@click.argument("concept")
@click.option("--model", required=True, help="Registered model the vector belongs to.")
@click.option(
    "--file",
    "file",
    required=True,
    type=click.Path(),
    help="A .safetensors file: one [n_layers, d_model] tensor, or one [d_model] per layer index.",
)
@click.option("--hook-point", default="resid_post", show_default=True, help="Where it is added.")
@click.option("--token-position", default="last", show_default=True, help="Token it was read at.")
@click.option("--estimator", default="imported", show_default=True, help="How it was computed.")
@click.option("--replace", is_flag=True, help="Replace a different vector with the same identity.")
@json_option
def register_vector(
    concept: str,
    model: str,
    file: str,
    hook_point: str,
    token_position: str,
    estimator: str,
    replace: bool,
    as_json: bool,
) -> None:
    """Import a vector computed elsewhere for CONCEPT[@VERSION] on a model.

    \b
    Example:
      crx register vector happiness@1 --model smollm2-135m-instruct --file happy.safetensors
    """
    result = registry().register_vector(
        concept,
        model,
        file,
        hook_point=hook_point,
        token_position=token_position,
        estimator=estimator,
        replace=replace,
    )
    if as_json:
        emit_json(result)
        return
    v = result.record
    verb = "registered" if result.created else "unchanged"
    click.echo(f"vector {v.id}: {verb} ({v.concept}@{v.concept_version} on {v.model})")
