"""Records the registry returns: plain pydantic models, detached from any database session.

Their JSON form (``model_dump(mode="json")``) is what ``crx ... --json`` prints; field names are
part of crx's stable interface (documented in the README): fields may be added, never renamed
or removed within a major version.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)


class ModelRecord(Record):
    id: int
    name: str
    path: str
    gguf_file: str | None = None
    revision: str | None = None
    architecture: str | None = None
    model_type: str | None = None
    n_layers: int
    d_model: int
    vocab_size: int | None = None
    config_sha256: str | None = None
    tokenizer_sha256: str | None = None
    weights_sha256: str | None = None
    family: str | None = None
    role: str | None = None
    tags: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


class ConceptVersionRecord(Record):
    id: int
    concept: str
    version: int
    ref: str  # "NAME@VERSION"
    description: str = ""
    pairs_oid: str
    n_pairs: int
    template: str
    pair_construction: str
    extraction: dict[str, Any] = Field(default_factory=dict)
    content_sha256: str
    tags: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class ConceptRecord(Record):
    id: int
    name: str
    description: str = ""
    versions: list[int]
    latest_version: int | None
    created_at: datetime
    updated_at: datetime


class VectorRecord(Record):
    id: int
    concept: str
    concept_version: int
    concept_version_id: int
    model: str
    model_id: int
    hook_point: str
    token_position: str
    estimator: str
    oid: str
    n_layers: int
    d_model: int
    dtype: str
    layers: list[int] | None = None
    layer_norms: list[float]
    origin: Literal["extracted", "imported", "mapped"]
    source_vector_id: int | None = None
    map_ids: list[int] | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class MapRecord(Record):
    id: int
    source_model: str
    target_model: str
    source_layer: int
    target_layer: int
    oid: str
    solver: str
    solver_settings: dict[str, Any] = Field(default_factory=dict)
    corpus_oid: str | None = None
    n_samples: int | None = None
    r2: float | None = None
    mse: float | None = None
    cosine: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class MapAnchorRecord(Record):
    """A concept version whose native vectors on both models anchored a map's fit."""

    concept: str
    version: int
    concept_version_id: int
    source_vector_id: int
    target_vector_id: int

    @property
    def ref(self) -> str:
        return f"{self.concept}@{self.version}"


def _layer_pairs(pairs: list[tuple[int, int]]) -> str:
    if len(pairs) <= 3:
        return ",".join(f"{s}->{t}" for s, t in pairs)
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    return f"{min(sources)}-{max(sources)}->{min(targets)}-{max(targets)} ({len(pairs)} maps)"


def mapping_text(vector: VectorRecord, maps: dict[int, MapRecord]) -> str:
    """How a mapped vector was made, so two transplants of one concept can be told apart:
    ``vector 1 on smollm, ridge 0->1,0->2`` (the source vector, each map's solver and its
    source -> target layers), or for a chain of maps ``..., ridge+ridge 2->1->3 via mid``.
    ``maps`` holds the vector's maps by id; "-" for a vector that was not mapped."""
    if vector.origin != "mapped":
        return "-"
    found = [maps[i] for i in vector.map_ids or [] if i in maps]
    source = f"vector {vector.source_vector_id}"
    if not found:
        return f"{source}, maps {','.join(map(str, vector.map_ids or [])) or '-'}"
    source += f" on {found[0].source_model}"
    solvers = "+".join(dict.fromkeys(m.solver for m in found))
    if all(m.source_model == found[0].source_model for m in found):
        # `crx transplant`: one map per target layer, side by side.
        pairs = sorted(((m.source_layer, m.target_layer) for m in found), key=lambda p: p[::-1])
        return f"{source}, {solvers} {_layer_pairs(pairs)}"
    # A planned chain: each map feeds the next.
    layers = "->".join([str(found[0].source_layer), *(str(m.target_layer) for m in found)])
    via = ",".join(m.target_model for m in found[:-1])
    return f"{source}, {solvers} {layers} via {via}"


class EvaluationRecord(Record):
    id: int
    vector_id: int | None = None
    model: str
    task: str
    dataset_oid: str | None = None
    layers: list[int] | None = None
    alpha: float | None = None
    metric: str
    value: float
    n: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class AuditEventRecord(Record):
    id: int
    at: datetime
    actor: str
    action: str
    object_kind: str
    object_id: int | None = None
    object_ref: str
    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    label: str | None = None  # CRX_ACTOR when it was set: a display label, never the identity
    reason: str | None = None
    model_id: int | None = None  # the (target) model the event concerns, where there is one


class FieldUpdate(Record):
    """One field a register call changed on an existing row: its value before and after."""

    field: str
    old: Any = None
    new: Any = None


class Registered(Record, Generic[T]):
    """The outcome of a register call: the record, whether this call created it, and what it
    changed on a row that was there (empty when it created the row or changed nothing)."""

    record: T
    created: bool
    changes: list[FieldUpdate] = Field(default_factory=list)


class Page(Record, Generic[T]):
    """One page of a listing; pass ``next_after`` as ``after`` to get the next (None = done)."""

    items: list[T]
    next_after: int | None = None


class BlobProblem(Record):
    oid: str
    status: Literal["missing", "corrupt"]
    referenced_by: list[str]


class VerifyReport(Record):
    store: str
    checked: int
    ok: int
    problems: list[BlobProblem]
    unreferenced: int


class GcReport(Record):
    store: str
    unreferenced: list[str]
    deleted: bool
    stale_temporary_files: int = 0  # left by killed writers; removed with the blobs


class ExportedLayer(Record):
    """One layer of an exported vector: the strength baked into it and where it came from."""

    layer: int
    strength: float  # the file holds strength × the stored row
    vector_norm: float  # |v[layer]| as stored
    reference_norm: float | None = None  # the layer's mean residual norm (relative α only)
    reference_norm_from: str | None = None  # "evaluation 17" or "measured"


class ExportReport(Record):
    """What ``crx export vector`` wrote, and why those layers and that strength."""

    path: str
    format: Literal["safetensors", "gguf"]
    vector_id: int
    concept: str  # NAME@V
    model: str
    source: Literal["raw", "best-evaluation", "evaluation", "asked"]
    evaluation_id: int | None = None
    alpha: float | None = None
    normalize: bool | None = None  # True: α × the layer's mean residual norm
    layers: list[ExportedLayer]
    dropped_layers: list[int] = Field(default_factory=list)  # chosen but not written (GGUF: 0)
    why: str
    notes: list[str] = Field(default_factory=list)
    llama_cpp_args: list[str] | None = None  # GGUF: the flags that apply it as exported

    def lines(self) -> list[str]:
        """What ``crx export vector`` prints: the file, the vector, each layer's strength and
        where it came from, notes, and the llama.cpp flags that apply it."""
        from crx.schemas.plan import alpha_text

        layers = ", ".join(str(e.layer) for e in self.layers)
        head = f"wrote {self.path} ({self.format}): vector {self.vector_id} "
        head += f"({self.concept} on {self.model}), "
        if self.source == "raw":
            lines = [head + f"layers {layers} at strength 1: {self.why}"]
        else:
            unit = alpha_text(self.alpha or 0.0, bool(self.normalize))
            parts = []
            for e in self.layers:
                if e.reference_norm is not None:
                    parts.append(
                        f"layer {e.layer}: strength {e.strength:.4g} = α {self.alpha:g} × "
                        f"reference norm {e.reference_norm:.4g} ({e.reference_norm_from}) / "
                        f"|v| {e.vector_norm:.4g}"
                    )
                else:
                    parts.append(f"layer {e.layer}: strength {e.strength:.4g}")
            lines = [head + f"α {unit}, baked in: {self.why}"] + [f"  {p}" for p in parts]
        lines += [f"  {note}" for note in self.notes]
        if self.llama_cpp_args:
            lines.append("llama.cpp: " + " ".join(self.llama_cpp_args))
        return lines


class InitReport(Record):
    database: str
    store: str
    revision_before: str | None
    revision: str


class SchemaStatus(Record):
    current: str | None  # None: no crx schema yet
    head: str  # the revision this crx expects
    up_to_date: bool
