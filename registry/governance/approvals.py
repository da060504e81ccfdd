"""Approvals and rejections: one approver's decision on one exact vector (its oid) for an alias.

Rows are append-only (a database trigger refuses changes); a later decision by the same actor
supersedes the earlier one. On PostgreSQL only the approver role may insert them (a GRANT), and
the actor is the role the database authenticated, never a name the client chose.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from crx.registry.audit import current_actor, display_label, record_event
from crx.registry.db.tables import (
    SqlApproval,
    SqlConcept,
    SqlConceptVersion,
    SqlModel,
    SqlVector,
)
from crx.registry.governance.aliases import check_aliasable
from crx.registry.governance.locks import lock_vector
from crx.registry.governance.subjects import Subject
from crx.registry.names import check_name, check_text
from crx.registry.timeutil import as_utc, now
from crx.schemas.governance import PROTECTED_ALIAS, ApprovalRecord, Decision


def decide(
    session: Session,
    subject: Subject,
    decision: Decision,
    *,
    alias: str = PROTECTED_ALIAS,
    reason: str | None = None,
) -> ApprovalRecord:
    check_name("alias", alias)
    check_text("reason", reason)
    lock_vector(session, subject.vector.id)
    if decision == "approve":
        check_aliasable(session, subject)
    row = SqlApproval(
        vector_id=subject.vector.id,
        vector_oid=subject.vector.oid,
        model_id=subject.model.id,
        alias=alias,
        decision=decision,
        actor=current_actor(),
        label=display_label(),
        reason=reason,
        at=now(),
    )
    session.add(row)
    session.flush()
    session.refresh(row)  # the database stamped actor and time
    record_event(
        session,
        f"approval.{decision}",
        "vector",
        subject.vector.id,
        f"{subject.ref} on {subject.model.name} for {alias}",
        new={"approval_id": row.id, "oid": subject.vector.oid, "alias": alias},
        reason=reason,
        model_id=subject.model.id,
    )
    return _record(
        row, subject.concept.name, subject.version.version, subject.model.name, subject.vector.oid
    )


def _record(
    row: SqlApproval, concept: str, version: int, model: str, current_oid: str
) -> ApprovalRecord:
    return ApprovalRecord(
        id=row.id,
        concept=concept,
        concept_version=version,
        model=model,
        vector_id=row.vector_id,
        vector_oid=row.vector_oid,
        alias=row.alias,
        decision="approve" if row.decision == "approve" else "reject",
        current=row.vector_oid == current_oid,
        actor=row.actor,
        label=row.label,
        reason=row.reason,
        at=as_utc(row.at),
    )


def listing(
    session: Session,
    *,
    model: str | None = None,
    concept: str | None = None,
    vector_id: int | None = None,
) -> list[ApprovalRecord]:
    query = (
        select(
            SqlApproval, SqlConcept.name, SqlConceptVersion.version, SqlModel.name, SqlVector.oid
        )
        .join(SqlVector, SqlApproval.vector_id == SqlVector.id)
        .join(SqlConceptVersion, SqlVector.concept_version_id == SqlConceptVersion.id)
        .join(SqlConcept, SqlConceptVersion.concept_id == SqlConcept.id)
        .join(SqlModel, SqlApproval.model_id == SqlModel.id)
        .order_by(SqlApproval.id)
    )
    if model is not None:
        query = query.where(SqlModel.name == model)
    if concept is not None:
        query = query.where(SqlConcept.name == concept)
    if vector_id is not None:
        query = query.where(SqlApproval.vector_id == vector_id)
    return [_record(*row) for row in session.execute(query)]
