"""``crx promote``: move a protected alias after the governing policy's checks pass.

All in one write transaction that holds the vector's lock (`crx.registry.governance.locks`):
the checks (not deprecated, the policy's evidence on the target, no standing rejection, enough
approvals of the exact content by others than the one promoting), then the compare-and-swap
move. Any failing check refuses the whole promotion, every failing check listed, nothing
changed. The database repeats the approval and deprecation checks on the move itself.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from crx.registry.errors import PromotionRefused
from crx.registry.governance import aliases, policies
from crx.registry.governance.locks import lock_vector
from crx.registry.governance.subjects import Subject
from crx.registry.names import check_name
from crx.schemas.governance import PromotionReport


def promote(
    session: Session,
    subject: Subject,
    alias: str,
    current: policies.CurrentDataset,
    *,
    reason: str | None = None,
    expect: str | int | None = None,
    expect_revision: int | None = None,
    check_only: bool = False,
) -> PromotionReport:
    """Check, then (unless ``check_only``) move ``alias`` to the subject's vector."""
    check_name("alias", alias)
    lock_vector(session, subject.vector.id)
    policy = policies.governing(session, subject.concept.name, subject.model.name, alias)
    checks = policies.check_all(session, subject, alias, policy, current)
    report = PromotionReport(
        concept_version=subject.ref,
        model=subject.model.name,
        alias=alias,
        vector_id=subject.vector.id,
        vector_oid=subject.vector.oid,
        policy=policy.spec.name if policy is not None else None,
        checks=checks,
        promoted=False,
    )
    failures = [c.detail for c in checks if not c.passed]
    if check_only:
        return report
    if failures:
        raise PromotionRefused(f"{subject.describe()} to {alias}", failures)
    record = aliases.move(
        session,
        subject,
        alias,
        action="promote",
        expect=expect,
        expect_revision=expect_revision,
        reason=reason,
    )
    return report.model_copy(update={"promoted": True, "alias_record": record})
