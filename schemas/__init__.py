"""Pydantic models: the records the registry returns, spec files, plans, saved diffs, name rules."""

from crx.schemas.records import (
    AuditEventRecord,
    BlobProblem,
    ConceptRecord,
    ConceptVersionRecord,
    EvaluationRecord,
    FieldUpdate,
    GcReport,
    InitReport,
    MapRecord,
    ModelRecord,
    Page,
    Registered,
    SchemaStatus,
    VectorRecord,
    VerifyReport,
)

__all__ = [
    "AuditEventRecord",
    "BlobProblem",
    "ConceptRecord",
    "ConceptVersionRecord",
    "EvaluationRecord",
    "FieldUpdate",
    "GcReport",
    "InitReport",
    "MapRecord",
    "ModelRecord",
    "Page",
    "Registered",
    "SchemaStatus",
    "VectorRecord",
    "VerifyReport",
]
