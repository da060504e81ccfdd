"""Evaluation results: one row per metric of one (subject, target model, task, α, layers) run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crx.registry.audit import record_event
from crx.registry.catalog.paging import page
from crx.registry.db.tables import SqlEvaluation, SqlModel
from crx.registry.hashing import json_safe
from crx.registry.timeutil import as_utc, now
from crx.schemas.records import EvaluationRecord, Page


def to_record(row: SqlEvaluation, model: str) -> EvaluationRecord:
    return EvaluationRecord(
        id=row.id,
        vector_id=row.vector_id,
        model=model,
        task=row.task,
        dataset_oid=row.dataset_oid,
        layers=list(row.layers) if row.layers is not None else None,
        alpha=row.alpha,
        metric=row.metric,
        value=row.value,
        n=row.n,
        settings=dict(row.settings or {}),
        created_at=as_utc(row.created_at),
    )


def add(
    session: Session,
    *,
    model: SqlModel,
    task: str,
    metrics: dict[str, float],
    vector_id: int | None,
    dataset_oid: str | None,
    layers: list[int] | None,
    alpha: float | None,
    n: int | None,
    settings: dict[str, Any] | None,
) -> list[EvaluationRecord]:
    """Record every metric of one evaluation run (one audit event for the run)."""
    stamp = now()
    rows = [
        SqlEvaluation(
            vector_id=vector_id,
            model_id=model.id,
            task=task,
            dataset_oid=dataset_oid,
            layers=layers,
            alpha=alpha,
            metric=metric,
            value=float(value),
            n=n,
            settings=json_safe(settings or {}),
            created_at=stamp,
        )
        for metric, value in metrics.items()
    ]
    session.add_all(rows)
    session.flush()
    subject = f"vector {vector_id}" if vector_id is not None else "base"
    record_event(
        session,
        "record",
        "evaluation",
        rows[0].id if rows else None,
        f"{task} of {subject} on {model.name}",
        new={"metrics": dict(metrics), "alpha": alpha, "layers": layers, "n": n},
        model_id=model.id,
    )
    return [to_record(row, model.name) for row in rows]


def listing(
    session: Session,
    *,
    limit: int | None,
    after: int | None,
    model: str | None = None,
    vector_id: int | None = None,
    task: str | None = None,
) -> Page[EvaluationRecord]:
    statement = select(SqlEvaluation, SqlModel.name).join(
        SqlModel, SqlEvaluation.model_id == SqlModel.id
    )
    if model is not None:
        statement = statement.where(SqlModel.name == model)
    if vector_id is not None:
        statement = statement.where(SqlEvaluation.vector_id == vector_id)
    if task is not None:
        statement = statement.where(SqlEvaluation.task == task)

    def convert(rows: Sequence[Any]) -> list[EvaluationRecord]:
        return [to_record(*row) for row in rows]

    return page(session, statement, SqlEvaluation.id, convert, limit=limit, after=after)
