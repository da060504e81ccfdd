"""``crx plan``: the transplant plan for a target, for people (a report) or scripts (JSON)."""

from __future__ import annotations

import click

from crx.cli.context import json_option, registry
from crx.cli.render import emit_json
from crx.schemas.plan import ConceptPlan, Route, TransplantPlan


def _alpha(route: Route) -> str:
    # Which α is meant is always said: "× residual norm" (the default) or "(absolute)".
    a = route.alpha
    if not a.evaluated:
        return f"{a.text} (not evaluated)"
    base = "" if a.base_value is None else f", base {a.base_value:.3f}"
    return f"{a.text} ({a.metric} {a.value:.3f}{base}, n={a.n})"


def route_text(route: Route) -> str:
    fit = ""
    if route.fit_r2 is not None:
        fit = f", R² {route.fit_r2:.3f}" + (" est." if route.fit_r2_estimated else "")
    if route.fit_r2_measured is not None:
        fit += f" (measured {route.fit_r2_measured:.3f})"
    what = f"vector {route.vector_id}" if route.vector_id is not None else "to map"
    via = "" if not route.hops else " via maps " + ",".join(str(h.map_id) for h in route.hops)
    return (
        f"{route.kind} from {route.source_model} (vector {route.source_vector_id}){via}, "
        f"layer {route.layer}{fit}, {_alpha(route)}; {what}"
    )


def _report(plan: TransplantPlan) -> None:
    t = plan.target
    shape = f"{t.n_layers} layers x {t.d_model}" if t.n_layers else "shape unknown"
    state = "registered" if t.registered else "NOT registered"
    click.echo(f"Plan for {t.name} ({state}, {shape}); registry at audit event "
               f"{plan.last_audit_event}")  # fmt: skip
    for step in plan.steps:
        click.echo(f"  first: {step.command}    # {step.description}")
    if not plan.concepts:
        click.echo("no concepts to plan (none has a vector yet; name some with --concept)")
    for item in plan.concepts:
        _concept(item)


def _concept(item: ConceptPlan) -> None:
    click.echo(f"\n{item.concept}: {item.status}")
    if item.alias is not None:
        a = item.alias
        click.echo(f"  alias: {a.name} → vector {a.vector_id} (revision {a.revision})")
    if item.chosen is not None:
        click.echo(f"  chosen: {route_text(item.chosen)}")
        click.echo(f"  why: {item.why}")
        for evidence in item.chosen.evidence:
            click.echo(f"  evidence: {evidence}")
        for n, other in enumerate(item.candidates[1:], start=2):
            click.echo(f"  #{n}: {route_text(other)}")
    else:
        click.echo(f"  why: {item.why}")
    for reason in item.reasons:
        click.echo(f"  not used: {reason}")
    for step in item.steps:
        click.echo(f"  step: {step.command}    # {step.description}")


@click.command()
@click.option(
    "--target", required=True, help="Target model: a registered name, a folder, a hub id or a name."
)
@click.option(
    "--concept",
    "concepts",
    multiple=True,
    metavar="NAME[@V|@ALIAS]",
    help="Concept to plan (repeatable; default: the concepts marked for use, else every concept "
    "that has a vector, and every concept with the alias on the target).",
)
@click.option(
    "--alias",
    metavar="NAME",
    help="Plan each concept from this alias on the target instead of prod (concepts without "
    "it are ranked).",
)
@click.option(
    "--max-hops", type=click.IntRange(min=1), default=3, show_default=True,
    help="Longest chain of maps to consider.",
)  # fmt: skip
@click.option(
    "--min-r2", type=float, default=0.2, show_default=True,
    help="Refuse maps whose held-out R² is below this.",
)  # fmt: skip
@click.option(
    "--measure",
    is_flag=True,
    help="Measure chained maps' R² on cached calibration states (when cached).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the plan JSON here.",
)
@click.option("--force", is_flag=True, help="Replace the -o file if it exists.")
@json_option
def plan(
    target: str,
    concepts: tuple[str, ...],
    alias: str | None,
    max_hops: int,
    min_r2: float,
    measure: bool,
    output: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Plan how to put concepts into a target model: rank routes, choose layer and alpha.

    Routes: a native vector on the target, a source vector through a fitted map, or through a
    chain of maps. Alpha (× the layer's mean residual norm, unless recorded as absolute) comes
    from recorded evaluations, else a default marked "not evaluated". An unregistered target
    gets the steps (with commands) that would make routes.
    A concept with a prod alias on the target is planned from it (--alias: another alias);
    NAME@V is planned as asked. Deprecated vectors, maps, models and concept versions are
    never chosen.

    \b
    Example:
      crx plan --target gemma3-270m --concept happiness --concept sadness
      crx plan --target gemma3-270m --alias staging --concept honesty
      crx plan --target llama-70b
      crx plan --target gemma3-270m -o plan.json && crx transplant --plan plan.json
    """
    reg = registry()
    result = reg.plan(
        target, concepts, max_hops=max_hops, min_r2=min_r2, measure=measure, alias=alias
    )
    if output:
        reg.save_plan(result, output, force=force)
    if as_json:
        emit_json(result)
        return
    _report(result)
    if output:
        click.echo(f"\nplan written to {output}")
