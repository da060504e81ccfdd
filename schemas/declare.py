"""What ``crx diff`` reports and ``crx apply`` does: changes per object, and the saved diff.

A `Change` is one object of the catalogue (a model, a concept, an extraction, a map fit, a
transplant, an evaluation or a promotion policy) with its action and, for an update, the fields
that change (a policy's evidence rules as ``evidence[I]`` or ``evidence[I].FIELD``).
``compute`` names the work apply would run for it (pull, extract, fit, transplant, evaluate).
A `SavedDiff` is a diff saved with ``crx diff -o``: ``crx apply diff.json`` refuses it when the
registry (its last audit event) or a spec file (its sha256) moved since.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Action = Literal["create", "update", "unchanged", "remove"]
ObjectKind = Literal["model", "concept", "extraction", "map", "transplant", "evaluation", "policy"]


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class FieldChange(_Document):
    field: str
    old: Any = None
    new: Any = None


class Change(_Document):
    key: str
    kind: ObjectKind
    action: Action
    changes: list[FieldChange] = Field(default_factory=list)
    compute: list[str] = Field(default_factory=list)  # the work apply runs for it
    where: str | None = None  # FILE:LINE of its spec (None for a removal)
    note: str = ""


class SpecFileDigest(_Document):
    path: str
    sha256: str


class SavedDiff(_Document):
    """A diff saved by ``crx diff -o`` (its kind keeps the name it was first written under)."""

    schema_version: Literal[1] = 1
    kind: Literal["crx.apply-plan"] = "crx.apply-plan"
    created_at: datetime
    registry: str
    last_audit_event: int
    source: str  # the spec file or folder the diff was made from
    spec_files: list[SpecFileDigest]
    prune: bool = False
    changes: list[Change]


class ApplyReport(_Document):
    changes: list[Change]
    applied: bool  # False when there was nothing to do
    rows_written: int = 0
    last_audit_event: int = 0
