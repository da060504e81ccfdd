"""``crx list ...`` and ``crx show ...``: read-only views, as tables or ``--json``."""

from __future__ import annotations

import click

from crx.cli.context import after_option, json_option, limit_option, reader, registry
from crx.cli.render import (
    alpha_cell,
    emit_fields,
    emit_json,
    emit_table,
    next_page_hint,
    short,
    shown_actor,
)
from crx.schemas.records import mapping_text


@click.group("list")
def list_() -> None:
    """List models, concepts, vectors, maps, evaluations or audit events.

    With --json, prints {"items": [...], "next_after": ID or null}; pass --after ID for the
    next page.

    \b
    Example:
      crx list models
      crx list vectors --model gemma3-270m --json
    """


@list_.command("models")
@limit_option
@after_option
@json_option
def list_models(limit: int, after: int | None, as_json: bool) -> None:
    """List registered models.

    \b
    Example:
      crx list models --json
    """
    result = registry().list_models(limit=limit, after=after)
    if as_json:
        emit_json(result)
        return
    emit_table(
        ["id", "name", "type", "layers", "d_model", "role", "family", "path"],
        [
            (m.id, m.name, m.model_type, m.n_layers, m.d_model, m.role, m.family, m.path)
            for m in result.items
        ],
        "no models (register one with `crx register model`)",
    )
    next_page_hint(result.next_after)


@list_.command("concepts")
@limit_option
@after_option
@json_option
def list_concepts(limit: int, after: int | None, as_json: bool) -> None:
    """List concepts and their versions.

    \b
    Example:
      crx list concepts
    """
    result = registry().list_concepts(limit=limit, after=after)
    if as_json:
        emit_json(result)
        return
    emit_table(
        ["id", "name", "latest", "versions", "description"],
        [(c.id, c.name, c.latest_version, c.versions, c.description) for c in result.items],
        "no concepts (register one with `crx register concept`)",
    )
    next_page_hint(result.next_after)


@list_.command("vectors")
@click.option("--concept", help="Only vectors of this concept.")
@click.option("--model", help="Only vectors on this model.")
@limit_option
@after_option
@json_option
def list_vectors(
    concept: str | None, model: str | None, limit: int, after: int | None, as_json: bool
) -> None:
    """List concept vectors (the id is the REF for show and export).

    MAPPED FROM tells transplants apart: the source vector and model, the maps' solver and
    their source->target layers (a chain of maps: its layers and the models it passes).

    \b
    Example:
      crx list vectors --model gemma3-270m
    """
    reg = reader()
    result = reg.list_vectors(concept=concept, model=model, limit=limit, after=after)
    if as_json:
        emit_json(result)
        return
    # A transplant is told apart by its source vector, maps' solver and layers: one read.
    maps = reg.get_maps([i for v in result.items for i in v.map_ids or []])
    emit_table(
        ["id", "concept", "model", "origin", "estimator", "hook", "layers", "mapped from", "oid"],
        [
            (
                v.id,
                f"{v.concept}@{v.concept_version}",
                v.model,
                v.origin,
                v.estimator,
                v.hook_point,
                v.n_layers,
                mapping_text(v, maps),
                short(v.oid),
            )
            for v in result.items
        ],
        "no vectors",
    )
    next_page_hint(result.next_after)


@list_.command("maps")
@click.option("--source", help="Only maps from this model.")
@click.option("--target", help="Only maps into this model.")
@limit_option
@after_option
@json_option
def list_maps(
    source: str | None, target: str | None, limit: int, after: int | None, as_json: bool
) -> None:
    """List affine maps between models.

    \b
    Example:
      crx list maps --source smollm2-135m-instruct --target gemma3-270m
    """
    result = registry().list_maps(source=source, target=target, limit=limit, after=after)
    if as_json:
        emit_json(result)
        return
    emit_table(
        ["id", "source", "target", "layers", "solver", "r2", "cosine", "n"],
        [
            (
                m.id,
                m.source_model,
                m.target_model,
                f"{m.source_layer}->{m.target_layer}",
                m.solver,
                m.r2,
                m.cosine,
                m.n_samples,
            )
            for m in result.items
        ],
        "no maps",
    )
    next_page_hint(result.next_after)


@list_.command("evaluations")
@click.option("--model", help="Only evaluations on this model.")
@click.option("--vector", "vector_id", type=int, help="Only evaluations of this vector.")
@click.option("--task", help="Only this task.")
@limit_option
@after_option
@json_option
def list_evaluations(
    model: str | None,
    vector_id: int | None,
    task: str | None,
    limit: int,
    after: int | None,
    as_json: bool,
) -> None:
    """List recorded evaluation metrics.

    \b
    Example:
      crx list evaluations --model gemma3-270m --task emotion
    """
    result = registry().list_evaluations(
        model=model, vector_id=vector_id, task=task, limit=limit, after=after
    )
    if as_json:
        emit_json(result)
        return
    emit_table(
        ["id", "model", "vector", "task", "alpha", "layers", "metric", "value", "n"],
        [
            (
                e.id,
                e.model,
                e.vector_id if e.vector_id is not None else "base",
                e.task,
                alpha_cell(e),
                e.layers,
                e.metric,
                e.value,
                e.n,
            )
            for e in result.items
        ],
        "no evaluations",
    )
    next_page_hint(result.next_after)


@list_.command("audit")
@limit_option
@after_option
@json_option
def list_audit(limit: int, after: int | None, as_json: bool) -> None:
    """List the audit trail: who changed what, when, old -> new.

    \b
    Example:
      crx list audit --limit 20
    """
    result = registry().audit_events(limit=limit, after=after)
    if as_json:
        emit_json(result)
        return
    emit_table(
        ["id", "at", "actor", "action", "object", "ref"],
        [
            (e.id, e.at, shown_actor(e.actor, e.label), e.action, e.object_kind, e.object_ref)
            for e in result.items
        ],
        "no events",
    )
    next_page_hint(result.next_after)


@click.group()
def show() -> None:
    """Show one model, concept version, vector or map in full.

    \b
    Example:
      crx show concept happiness@1
      crx show vector 3 --json
    """


@show.command("model")
@click.argument("ref")
@json_option
def show_model(ref: str, as_json: bool) -> None:
    """Show a model by name (or id).

    \b
    Example:
      crx show model gemma3-270m
    """
    record = reader().get_model(ref)
    if as_json:
        emit_json(record)
    else:
        emit_fields(list(record.model_dump().items()))


@show.command("concept")
@click.argument("ref")
@json_option
def show_concept(ref: str, as_json: bool) -> None:
    """Show a concept version: NAME (the latest) or NAME@VERSION.

    \b
    Example:
      crx show concept happiness@1
    """
    record = registry().get_concept(ref)
    if as_json:
        emit_json(record)
    else:
        emit_fields(list(record.model_dump().items()))


@show.command("vector")
@click.argument("ref", type=int)
@json_option
def show_vector(ref: int, as_json: bool) -> None:
    """Show a vector by id (as `crx list vectors` prints it).

    \b
    Example:
      crx show vector 3
    """
    record = registry().get_vector(ref)
    if as_json:
        emit_json(record)
        return
    fields = record.model_dump()
    norms = fields.pop("layer_norms")
    emit_fields([*fields.items(), ("layer_norms", " ".join(f"{x:.3g}" for x in norms))])


@show.command("map")
@click.argument("ref", type=int)
@json_option
def show_map(ref: int, as_json: bool) -> None:
    """Show an affine map by id (an anchored map: also the concept versions it was fitted on).

    \b
    Example:
      crx show map 1
    """
    reg = registry()
    record = reg.get_map(ref)
    # an anchored map's anchor concept versions (lineage: what its fit was given)
    anchors = [a.ref for a in reg.map_anchors([ref]).get(ref, [])]
    if as_json:
        emit_json({**record.model_dump(mode="json"), "anchors": anchors})
    else:
        fields = list(record.model_dump().items())
        if anchors:
            fields.append(("anchors", f"{len(anchors)}: {', '.join(anchors)}"))
        emit_fields(fields)


@show.command("maps")
@click.option("--source", required=True, help="Source model of the maps.")
@click.option("--target", required=True, help="Target model of the maps.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Also draw FILE.png: the R² heat-map over source x target layers, chosen pairs circled.",
)
@json_option
def show_maps(source: str, target: str, plot: str | None, as_json: bool) -> None:
    """Show the newest fit of maps SOURCE -> TARGET: its recipe, and the layer pairs it chose
    with their held-out R² (an auto fit: validation R² of every source layer per target).

    \b
    Example:
      crx show maps --source smollm2-135m-instruct --target gemma3-270m
      crx show maps --source smollm2-135m-instruct --target gemma3-270m --plot maps.png
    """
    reg = registry()
    if plot is not None:
        reg.check_plot_path(plot)
    grid = reg.map_grid(source, target)
    drawn = None if plot is None else reg.plot_maps(source, target, plot)
    if as_json:
        emit_json({**grid, "plot": None if drawn is None else str(drawn)})
        return
    click.echo(
        f"{grid['source']} -> {grid['target']}: {grid['n_maps']} maps, {grid['solver']}, "
        f"pairs={grid['pairs']}, corpus {(grid['corpus_oid'] or '-')[:12]}"
    )
    emit_table(
        ["source_layer", "target_layer", f"r2_{grid['split']}", "map", "test_r2"],
        [
            (c["source_layer"], c["target_layer"], c["r2"], c["map_id"], c["test_r2"])
            for c in grid["chosen"]
        ],
        "no chosen pairs",
    )
    if drawn is not None:
        click.echo(f"plot: {drawn}")
