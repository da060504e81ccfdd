"""Output: aligned tables for people, stable JSON for scripts (``--json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
from pydantic import BaseModel

from crx.schemas.records import EvaluationRecord, FieldUpdate


def emit_json(value: Any) -> None:
    """Print ``value`` (records, lists of records, plain data) as indented JSON."""
    click.echo(json.dumps(_plain(value), indent=2, ensure_ascii=False))


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    if not rows:
        click.echo(empty)
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def alpha_cell(e: EvaluationRecord) -> str | None:
    """An evaluation's α as a table shows it, saying which α: ``0.1 × norm`` (relative to the
    layer's mean residual norm) or ``4 absolute``; rows without ``settings.normalize`` were
    recorded as absolute."""
    if e.alpha is None:
        return None
    from crx.schemas.plan import alpha_text  # the plan schemas: not for every command that renders

    return alpha_text(e.alpha, bool(e.settings.get("normalize")), short=True)


def emit_fields(fields: Sequence[tuple[str, Any]]) -> None:
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        click.echo(f"{name.ljust(width)}  {_cell(value)}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def describe_changes(changes: Sequence[FieldUpdate]) -> str:
    """``path /a → /b; tags: source x → y, +gguf_sha256=..., -team`` (a dict field by key)."""
    parts = []
    for change in changes:
        old, new = change.old, change.new
        if isinstance(old, dict) and isinstance(new, dict):
            keys = [
                f"{k} {_cell(old[k])} → {_cell(new[k])}"
                if k in old and k in new
                else (f"+{k}={_cell(new[k])}" if k in new else f"-{k}")
                for k in dict.fromkeys([*old, *new])
                if old.get(k, _MISSING) != new.get(k, _MISSING)
            ]
            parts.append(f"{change.field}: {', '.join(keys)}")
        else:
            parts.append(f"{change.field} {_cell(old)} → {_cell(new)}")
    return "; ".join(parts)


_MISSING = object()


def short(oid: str | None) -> str:
    return oid[:12] if oid else "-"


def next_page_hint(next_after: int | None) -> None:
    if next_after is not None:
        click.echo(f"(more: --after {next_after})", err=True)


def shown_actor(actor: str, label: str | None) -> str:
    """The actor, with its display label (CRX_ACTOR) beside it when that says something more."""
    return actor if not label or label == actor else f"{actor} ({label})"
