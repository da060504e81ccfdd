"""Governance records and the policy document: aliases and their history, approvals, policies,
promotion checks, deprecations, roles and lineage.

Like every record here, their JSON form is what ``--json`` prints: fields may be added, never
renamed or removed within a major version. ``PolicySpec`` is also what a ``kind: policy`` spec
file holds (`crx apply`), and what `crx policy show` prints.

    kind: policy
    name: prod-gate
    concept: honesty          # omit: every concept
    model: gemma3-270m        # omit: every target model
    alias: prod               # the alias it governs (and protects); default prod
    evidence:
      - {task: emotion, metric: token_accuracy, min: 0.8, min_n: 20, dataset: current}
      - {task: truthfulqa, metric: mc1, not_below_base: true}
    approvals: 1              # distinct approvers, none of them the one who promotes
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PROTECTED_ALIAS = "prod"
Decision = Literal["approve", "reject"]
DEPRECATABLE = ("concept_version", "vector", "map", "model")


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)


class EvidenceRule(BaseModel):
    """One piece of evidence a vector must have on the target before promotion.

    Passes when some recorded evaluation of the vector on the target (at any α but 0, where
    the vector is not applied) has ``task`` and ``metric``, at least ``min_n`` examples, a
    value of at least ``min`` and, with ``not_below_base``, at least the bare model's value on
    the same dataset. ``dataset``:
    ``current`` (the dataset crx ships for that task, or for TruthfulQA the one the bare model
    was last evaluated on), ``any``, or an exact dataset oid.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    task: str
    metric: str
    min: float | None = None
    not_below_base: bool = False
    min_n: int | None = Field(default=None, ge=1)
    dataset: str = "current"


class PolicySpec(BaseModel):
    """A promotion policy (also the body of a ``kind: policy`` spec file)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str
    concept: str | None = None
    model: str | None = None
    alias: str = PROTECTED_ALIAS
    description: str = ""
    evidence: list[EvidenceRule] = Field(default_factory=list)
    approvals: int = Field(default=1, ge=1, le=100)


class PolicyRecord(Record):
    id: int
    spec: PolicySpec
    actor: str
    at: datetime


class AliasRecord(Record):
    id: int
    concept: str
    model: str
    name: str
    ref: str  # "CONCEPT@ALIAS"
    concept_version: int
    concept_version_ref: str  # "CONCEPT@VERSION"
    vector_id: int
    vector_oid: str
    revision: int
    protected: bool
    action: str
    actor: str
    label: str | None = None
    reason: str | None = None
    updated_at: datetime


class AliasHistoryRecord(Record):
    id: int
    concept: str
    model: str
    name: str
    revision: int
    action: str  # set | move | promote | delete
    old_vector_id: int | None = None
    new_vector_id: int | None = None
    old_concept_version: int | None = None
    new_concept_version: int | None = None
    actor: str
    label: str | None = None
    reason: str | None = None
    at: datetime


class ApprovalRecord(Record):
    id: int
    concept: str
    concept_version: int
    model: str
    vector_id: int
    vector_oid: str
    alias: str
    decision: Decision
    current: bool  # the vector still has this content (an approval is for one exact oid)
    actor: str
    label: str | None = None
    reason: str | None = None
    at: datetime


class PolicyCheck(Record):
    """One check of a promotion: what was asked, whether it passed, and what was found."""

    check: str  # "evidence", "approvals", "deprecation", "rejection", ...
    passed: bool
    detail: str


class PromotionReport(Record):
    concept_version: str
    model: str
    alias: str
    vector_id: int
    vector_oid: str
    policy: str | None  # the governing policy's name; None: crx's default (one approval)
    checks: list[PolicyCheck]
    promoted: bool
    alias_record: AliasRecord | None = None


class DeprecationRecord(Record):
    id: int
    object_kind: str
    object_id: int
    object_ref: str
    actor: str
    label: str | None = None
    reason: str
    at: datetime


class RoleReport(Record):
    """What ``crx db roles`` made sure of (names only: never a credential)."""

    roles: list[str]
    created: list[str]
    granted: list[str]
    users: list[str] = Field(default_factory=list)


class LineageNode(Record):
    """One node of a lineage graph: an object and the edges into it (``inputs``)."""

    key: str  # "vector:12", "map:3", "pairs:<oid>", "concept:honesty@3", "model:gemma", ...
    kind: str
    label: str
    details: dict[str, str | int | float | None] = Field(default_factory=dict)
    inputs: list[str] = Field(default_factory=list)  # keys of the nodes it was made from


class Lineage(Record):
    """A vector's lineage (`crx lineage`): ``root`` is its node's key; the nodes come in the
    order they were reached from it (the root first)."""

    root: str
    nodes: list[LineageNode]
    vector_id: int | None = None  # the root vector's id


class TokenRecord(Record):
    """An API token of ``crx serve`` as ``crx token list`` shows it: never its secret."""

    id: int
    user: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class CreatedToken(Record):
    """A new token and its secret: the only time the secret exists outside its holder."""

    token: TokenRecord
    secret: str
