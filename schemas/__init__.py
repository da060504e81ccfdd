"""Pydantic models: records the registry returns (and, later, spec files and plan documents)."""

from crx.schemas.records import (
    AuditEventRecord,
    BlobProblem,
    ConceptRecord,
    ConceptVersionRecord,
    EvaluationRecord,
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
