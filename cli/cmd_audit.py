"""``crx audit`` (the audit trail, filtered) and ``crx lineage`` (where a vector came from)."""

from __future__ import annotations

import click

from crx.cli.context import json_option, limit_option, registry
from crx.cli.render import emit_json, emit_table, next_page_hint, shown_actor
from crx.registry.errors import InvalidInput
from crx.schemas.governance import Lineage, LineageNode


@click.command("audit")
@click.option(
    "--object",
    "ref",
    metavar="REF",
    help="vector:ID, map:ID, model:NAME, policy:NAME, NAME@V (with --model: its vectors "
    "there) or NAME@ALIAS (the alias and every vector it pointed at).",
)
@click.option("--model", metavar="M", help="Events concerning this (target) model.")
@click.option("--actor", metavar="A", help="Who acted (the recorded identity, exactly).")
@click.option(
    "--action", metavar="ACT", help="An action (alias.promote) or a prefix (alias. or alias*)."
)
@click.option("--since", metavar="DATE", help="From this ISO 8601 date or datetime (UTC).")
@click.option(
    "--until", metavar="DATE", help="Up to this date (its whole day) or datetime, inclusive."
)
@limit_option
@click.option(
    "--after", type=int, default=None, help="Continue after this id (older events: the cursor)."
)
@json_option
def audit(
    ref: str | None,
    model: str | None,
    actor: str | None,
    action: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    after: int | None,
    as_json: bool,
) -> None:
    """Search the audit trail: who changed what, when and why, newest first.

    Filters combine. Dates are ISO 8601 (naive = UTC); --until with a date alone includes
    that whole day. The events of an alias (NAME@ALIAS --model M) are its own moves and the
    events of every vector it pointed at, so "what was prod on a date, and who moved it" is
    the first alias.* row of --until DATE. `crx list audit` lists everything, oldest first.

    \b
    Example:
      crx audit --object honesty@prod --model gemma3-270m --until 2026-11-20
      crx audit --actor alice --action approval. --since 2026-11-01
      crx audit --object vector:12 --json
    """
    result = registry().audit(
        object=ref,
        model=model,
        actor=actor,
        action=action,
        since=since,
        until=until,
        limit=limit,
        after=after,
    )
    if as_json:
        emit_json(result)
        return
    emit_table(
        ["id", "at", "actor", "action", "object", "ref", "reason"],
        [
            (
                e.id,
                e.at,
                shown_actor(e.actor, e.label),
                e.action,
                e.object_kind,
                e.object_ref,
                e.reason,
            )
            for e in result.items
        ],
        "no events",
    )
    next_page_hint(result.next_after)


@click.command("lineage")
@click.argument("ref", required=False)
@click.option("--model", metavar="M", help="The target model (NAME@V names its vector there).")
@click.option("--vector", "vector_id", type=int, help="Pick one of several vectors by id.")
@click.option("--dot", "as_dot", is_flag=True, help="Print a Graphviz digraph.")
@json_option
def lineage(
    ref: str | None, model: str | None, vector_id: int | None, as_dot: bool, as_json: bool
) -> None:
    """Show where a vector came from and what was decided about it.

    Back from the vector: the source vectors and maps of a transplant (every hop), the concept
    version and its contrast pairs, the models and the maps' corpora. On the vector: its
    evaluations (best value per task and metric, its α, n and dataset, the bare model's
    value), approvals, the aliases pointing at it, and deprecations of anything in the graph.

    \b
    Example:
      crx lineage honesty@prod --model gemma3-270m
      crx lineage honesty@2 --model gemma3-270m --dot > lineage.dot
      crx lineage vector:12 --json
    """
    if as_dot and as_json:
        raise InvalidInput("--dot and --json are two formats: pick one")
    graph = registry().lineage(ref, model=model, vector_id=vector_id)
    if as_json:
        emit_json(graph)
    elif as_dot:
        click.echo(to_dot(graph), nl=False)
    else:
        for line in to_text(graph):
            click.echo(line)


# Nodes that hang off the object they name (shown under it), not ones it was made from.
HANGING = ("evaluation", "approval", "alias", "deprecation")


def to_text(graph: Lineage) -> list[str]:
    """An indented tree from the vector back to its origins; ``<-`` reads "made from"."""
    nodes = {n.key: n for n in graph.nodes}
    hanging: dict[str, list[LineageNode]] = {}
    for node in graph.nodes:
        if node.kind in HANGING:
            for key in node.inputs:
                hanging.setdefault(key, []).append(node)
    lines: list[str] = []
    seen: set[str] = set()

    def walk(key: str, depth: int) -> None:
        node = nodes[key]
        indent = "   " * depth
        arrow = "<- " if depth else ""
        if key in seen:
            lines.append(f"{indent}{arrow}{node.label} (see above)")
            return
        seen.add(key)
        lines.append(f"{indent}{arrow}{node.label}")
        below = indent + ("   " if depth else "")
        if node.kind == "vector":
            lines.append(f"{below}   oid {node.details.get('oid')}")
        for item in hanging.get(key, []):
            lines.append(f"{below}   * {item.kind}: {item.label}")
        for source in node.inputs:
            walk(source, depth + 1)

    walk(graph.root, 0)
    return lines


_SHAPES = {
    "vector": "box",
    "map": "cds",
    "model": "box3d",
    "concept_version": "folder",
    "pairs": "note",
    "corpus": "note",
    "evaluation": "ellipse",
    "approval": "octagon",
    "alias": "tab",
    "deprecation": "doubleoctagon",
}


def _quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def to_dot(graph: Lineage) -> str:
    """A Graphviz ``digraph``: one node per object, an edge from each input to what it made."""
    lines = [
        "digraph lineage {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="Helvetica"];',
    ]
    for node in graph.nodes:
        attributes = [f"label={_quoted(node.label)}", f"shape={_SHAPES.get(node.kind, 'box')}"]
        if node.key == graph.root:
            attributes.append("style=bold")
        if node.kind == "deprecation" or "deprecated" in node.details:
            attributes.append("color=red")
        lines.append(f"  {_quoted(node.key)} [{', '.join(attributes)}];")
    for node in graph.nodes:
        for source in node.inputs:
            lines.append(f"  {_quoted(source)} -> {_quoted(node.key)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
