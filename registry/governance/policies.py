"""Promotion policies: stored, matched to a (concept, model, alias), and checked.

The most specific policy governs: one naming the concept and the model, then the concept, then
the model, then one for any. Without a policy, promotion to ``prod`` still needs one approval
by someone other than the one who promotes (the database insists on that much). A policy's
alias is protected: it moves only through promotion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crx.registry.audit import acting_as, current_actor, record_event
from crx.registry.db.tables import SqlApproval, SqlEvaluation, SqlPolicy
from crx.registry.errors import InvalidInput, NotFound
from crx.registry.governance.subjects import Subject, deprecated_ids
from crx.registry.names import check_name, check_text
from crx.registry.timeutil import as_utc, now
from crx.schemas.governance import EvidenceRule, PolicyCheck, PolicyRecord, PolicySpec
from crx.schemas.plan import alpha_text

# (task, concept name) → the oid of the dataset crx currently evaluates that task on, or None.
CurrentDataset = Callable[[str, str], str | None]


def _rules(spec: PolicySpec) -> dict[str, Any]:
    return {
        "approvals": spec.approvals,
        "evidence": [rule.model_dump(mode="json", exclude_defaults=True) for rule in spec.evidence],
    }


def to_record(row: SqlPolicy) -> PolicyRecord:
    spec = PolicySpec(
        name=row.name,
        concept=row.concept,
        model=row.model,
        alias=row.alias,
        description=row.description,
        evidence=[EvidenceRule(**rule) for rule in row.rules.get("evidence", [])],
        approvals=int(row.rules.get("approvals", 1)),
    )
    return PolicyRecord(id=row.id, spec=spec, actor=row.actor, at=as_utc(row.at))


def check_spec(spec: PolicySpec) -> None:
    check_name("policy", spec.name)
    check_name("alias", spec.alias)
    for kind, value in (("concept", spec.concept), ("model", spec.model)):
        if value is not None:
            check_name(kind, value)
    check_text("description", spec.description)
    for rule in spec.evidence:
        check_text("task", rule.task, 100)
        check_text("metric", rule.metric, 100)
        if rule.min is None and not rule.not_below_base:
            raise InvalidInput(
                f"policy {spec.name}: an evidence rule for {rule.task} {rule.metric} needs "
                "min, not_below_base, or both"
            )


def put(session: Session, spec: PolicySpec) -> tuple[PolicyRecord, bool]:
    """Create or replace the policy named ``spec.name``; (record, changed)."""
    check_spec(spec)
    row = session.scalar(select(SqlPolicy).where(SqlPolicy.name == spec.name))
    fields = {
        "concept": spec.concept,
        "model": spec.model,
        "alias": spec.alias,
        "rules": _rules(spec),
        "description": spec.description,
        "actor": current_actor(),
        "at": now(),
    }
    new = spec.model_dump(mode="json")
    if row is None:
        row = SqlPolicy(name=spec.name, **fields)
        session.add(row)
        session.flush()
        record_event(session, "policy.create", "policy", row.id, spec.name, new=new)
        return to_record(row), True
    old = to_record(row).spec
    if old == spec:
        return to_record(row), False
    for key, value in fields.items():
        setattr(row, key, value)
    session.flush()
    record_event(
        session,
        "policy.update",
        "policy",
        row.id,
        spec.name,
        old=old.model_dump(mode="json"),
        new=new,
    )
    return to_record(row), True


def remove(session: Session, name: str) -> PolicyRecord:
    row = session.scalar(select(SqlPolicy).where(SqlPolicy.name == name))
    if row is None:
        raise NotFound(f"no policy {name!r} (see `crx policy show`)")
    record = to_record(row)
    session.delete(row)
    record_event(
        session, "policy.delete", "policy", row.id, name, old=record.spec.model_dump(mode="json")
    )
    return record


def get(session: Session, name: str) -> PolicyRecord:
    check_name("policy", name)
    row = session.scalar(select(SqlPolicy).where(SqlPolicy.name == name))
    if row is None:
        raise NotFound(f"no policy {name!r} (see `crx policy show`)")
    return to_record(row)


def listing(session: Session) -> list[PolicyRecord]:
    return [to_record(row) for row in session.scalars(select(SqlPolicy).order_by(SqlPolicy.name))]


def governing(session: Session, concept: str, model: str, alias: str) -> PolicyRecord | None:
    """The most specific policy for promoting ``concept`` on ``model`` to ``alias``."""
    rows = session.scalars(select(SqlPolicy).where(SqlPolicy.alias == alias)).all()
    matching = [r for r in rows if r.concept in (None, concept) and r.model in (None, model)]
    if not matching:
        return None
    best = max(matching, key=lambda r: (r.concept is not None, r.model is not None, -r.id))
    return to_record(best)


# -- checks -----------------------------------------------------------------------------------


def _short(oid: str | None) -> str:
    return oid[:12] if oid else "none"


def check_evidence(
    session: Session, rule: EvidenceRule, subject: Subject, current: CurrentDataset
) -> PolicyCheck:
    name = f"evidence {rule.task} {rule.metric}"
    wanted: str | None = None
    if rule.dataset == "current":
        wanted = current(rule.task, subject.concept.name)
        if wanted is None and rule.task == "truthfulqa":
            wanted = session.scalar(
                select(SqlEvaluation.dataset_oid)
                .where(
                    SqlEvaluation.model_id == subject.model.id,
                    SqlEvaluation.vector_id.is_(None),
                    SqlEvaluation.task == rule.task,
                )
                .order_by(SqlEvaluation.id.desc())
                .limit(1)
            )
        if wanted is None:
            return PolicyCheck(
                check=name,
                passed=False,
                detail=f"{name}: no current {rule.task} dataset is known (evaluate the bare "
                f"model first, or name the dataset's oid in the policy)",
            )
    elif rule.dataset != "any":
        wanted = rule.dataset
    rows = session.scalars(
        select(SqlEvaluation).where(
            SqlEvaluation.vector_id == subject.vector.id,
            SqlEvaluation.model_id == subject.model.id,
            SqlEvaluation.task == rule.task,
            SqlEvaluation.metric == rule.metric,
        )
    ).all()
    # At α = 0 a vector is not applied at all: such a row is the bare model, not evidence.
    rows = [r for r in rows if r.alpha != 0]
    on_data = [r for r in rows if wanted is None or r.dataset_oid == wanted]
    enough = [r for r in on_data if rule.min_n is None or (r.n or 0) >= rule.min_n]
    where = f"vector {subject.vector.id} on {subject.model.name}"
    if not enough:
        if not rows:
            why = f"no {rule.task} evaluation of {where} (run `crx evaluate`)"
        elif not on_data:
            why = f"no {rule.task} evaluation of {where} on dataset {_short(wanted)}"
        else:
            why = f"no {rule.task} evaluation of {where} with at least {rule.min_n} examples"
        return PolicyCheck(check=name, passed=False, detail=f"{name}: {why}")
    base = {
        (r.dataset_oid, r.metric): r.value
        for r in session.scalars(
            select(SqlEvaluation)
            .where(
                SqlEvaluation.vector_id.is_(None),
                SqlEvaluation.model_id == subject.model.id,
                SqlEvaluation.task == rule.task,
                SqlEvaluation.metric == rule.metric,
            )
            .order_by(SqlEvaluation.id)
        )
    }

    def passes(row: SqlEvaluation) -> bool:
        if rule.min is not None and row.value < rule.min:
            return False
        if rule.not_below_base:
            bare = base.get((row.dataset_oid, row.metric))
            return bare is not None and row.value >= bare
        return True

    best = max(enough, key=lambda r: (passes(r), r.value))
    alpha = (
        "bare"
        if best.alpha is None
        else "α " + alpha_text(best.alpha, bool((best.settings or {}).get("normalize")), short=True)
    )
    dataset = _short(best.dataset_oid)
    found = f"{rule.metric} {best.value:.3f} at {alpha} (n={best.n}, dataset {dataset})"
    bare_value = base.get((best.dataset_oid, best.metric))
    if rule.not_below_base:
        found += (
            f", bare model {bare_value:.3f}" if bare_value is not None else ", no bare-model value"
        )
    asked = []
    if rule.min is not None:
        asked.append(f"≥ {rule.min:g}")
    if rule.not_below_base:
        asked.append("not below the bare model on the same dataset")
    return PolicyCheck(
        check=name,
        passed=passes(best),
        detail=f"{name}: asked {' and '.join(asked)}; best {found}",
    )


def latest_decisions(session: Session, subject: Subject, alias: str) -> dict[str, SqlApproval]:
    """Each approver's latest decision on the vector's current content for ``alias``."""
    rows = session.scalars(
        select(SqlApproval)
        .where(
            SqlApproval.vector_id == subject.vector.id,
            SqlApproval.vector_oid == subject.vector.oid,
            SqlApproval.alias == alias,
        )
        .order_by(SqlApproval.id)
    )
    latest: dict[str, SqlApproval] = {}
    for row in rows:
        latest[row.actor] = row
    return latest


def check_approvals(
    session: Session, subject: Subject, alias: str, needed: int
) -> list[PolicyCheck]:
    mover = acting_as(session)
    latest = latest_decisions(session, subject, alias)
    rejected = [r for r in latest.values() if r.decision == "reject"]
    checks = []
    if rejected:
        who = ", ".join(f"{r.actor} ({r.reason or 'no reason given'})" for r in rejected)
        checks.append(
            PolicyCheck(check="rejection", passed=False, detail=f"rejected for {alias} by {who}")
        )
    approvers = sorted(a for a, r in latest.items() if r.decision == "approve" and a != mover)
    own = mover in latest and latest[mover].decision == "approve"
    detail = f"approvals: {len(approvers)} of {needed} from someone other than {mover}"
    detail += f" ({', '.join(approvers)})" if approvers else ""
    if own:
        detail += f"; {mover}'s own approval does not count"
    checks.append(PolicyCheck(check="approvals", passed=len(approvers) >= needed, detail=detail))
    return checks


def check_deprecation(session: Session, subject: Subject) -> PolicyCheck:
    found = []
    for kind, object_id, label in (
        ("vector", subject.vector.id, f"vector {subject.vector.id}"),
        ("concept_version", subject.version.id, subject.ref),
        ("model", subject.model.id, f"model {subject.model.name}"),
    ):
        reason = deprecated_ids(session, kind, [object_id]).get(object_id)
        if reason is not None:
            found.append(f"{label} is deprecated ({reason})")
    return PolicyCheck(
        check="deprecation",
        passed=not found,
        detail="; ".join(found) if found else "not deprecated",
    )


def check_all(
    session: Session,
    subject: Subject,
    alias: str,
    policy: PolicyRecord | None,
    current: CurrentDataset,
) -> list[PolicyCheck]:
    spec = policy.spec if policy is not None else PolicySpec(name="default", alias=alias)
    checks = [check_deprecation(session, subject)]
    checks += [check_evidence(session, rule, subject, current) for rule in spec.evidence]
    checks += check_approvals(session, subject, alias, spec.approvals)
    return checks
