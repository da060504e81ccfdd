"""The transplant plan: a versioned JSON document that `crx plan` writes and
`crx transplant --plan` / `Registry.load_plan` read.

A plan says, for one target model and each requested concept, which route puts the concept into
the target (a native vector, a source vector through one fitted map, or through a chain of
maps), at which layer and α, with the evidence behind the choice and the candidates it beat.
When the target or a map is missing it lists the steps, with exact commands, that would make a
route. A concept with a ``prod`` alias on the target (or the alias ``crx plan --alias`` names)
is planned from it: ``alias`` records which vector and revision. Deprecated objects are never
chosen; ``reasons`` says which were left out. Fields may be added within a
``schema_version``, never renamed or removed.

    {"schema_version": 1, "kind": "crx.transplant-plan", "target": {"name": "gemma3-270m", ...},
     "concepts": [{"concept": "happiness@1", "status": "to-transplant",
                   "chosen": {"kind": "direct", "layer": 13, "alpha": {...}, ...}, ...}]}
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PLAN_SCHEMA_VERSION: Literal[1] = 1
PLAN_KIND: Literal["crx.transplant-plan"] = "crx.transplant-plan"

RouteKind = Literal["native", "transplanted", "direct", "multi-hop"]
ConceptStatus = Literal["ready", "to-transplant", "needs-steps", "no-route"]


class PlanModel(BaseModel):
    # A plan read back must be exactly a plan: unknown keys are refused, not ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class MapHop(PlanModel):
    """One fitted map of a route, with the oid it had when planned (checked on execution)."""

    map_id: int
    oid: str
    source_model: str
    target_model: str
    source_layer: int
    target_layer: int
    solver: str
    r2: float | None = None


def alpha_text(alpha: float, normalize: bool, *, short: bool = False) -> str:
    """What an α means, said with it: ``0.1 × residual norm`` (relative to the layer's mean
    residual norm, crx's default) or ``4 (absolute)``; ``short`` for table cells."""
    if normalize:
        return f"{alpha:g} × {'norm' if short else 'residual norm'}"
    return f"{alpha:g} {'absolute' if short else '(absolute)'}"


class AlphaChoice(PlanModel):
    """The steering strength, and where it came from."""

    alpha: float = Field(allow_inf_nan=False)  # a NaN or infinite α would steer nonsense
    normalize: bool  # True: alpha is relative to the layer's mean residual norm
    evaluated: bool  # False: a default, "not evaluated" on this target
    task: str | None = None
    metric: str | None = None
    value: float | None = None  # the metric at this alpha
    base_value: float | None = None  # the bare target's metric on the same data, if recorded
    n: int | None = None
    dataset_oid: str | None = None
    alphas_tried: list[float] = Field(default_factory=list)
    note: str = ""
    evaluation_id: int | None = None  # the evaluation row this α is the best of

    @property
    def text(self) -> str:
        """``α 0.1 × residual norm`` or ``α 4 (absolute)``."""
        return "α " + alpha_text(self.alpha, self.normalize)


class Route(PlanModel):
    """One way to put a concept into the target at one layer."""

    kind: RouteKind
    source_model: str  # where the vector was extracted (the target itself for native)
    source_vector_id: int
    vector_id: int | None = None  # the vector on the target, when it already exists
    layer: int  # the target block steered
    hops: list[MapHop] = Field(default_factory=list)
    fit_r2: float | None = None  # held-out R² of the map; for a chain, the estimate below
    fit_r2_estimated: bool = False  # a chain's R², estimated as the product of its hops'
    fit_r2_measured: float | None = None  # a chain's R² measured on cached calibration states
    alpha: AlphaChoice
    evidence: list[str] = Field(default_factory=list)


class PlanStep(PlanModel):
    """Something to run before a route exists; ``command`` is exactly what to type."""

    action: Literal["register-model", "pull-model", "extract", "fit", "transplant", "evaluate"]
    description: str
    command: str


class AliasUse(PlanModel):
    """The alias a concept was planned from (``prod`` unless ``crx plan --alias``): the
    chosen route is the one to its vector, as the alias stood when planned."""

    name: str
    vector_id: int
    concept_version: int
    revision: int
    action: str  # the alias's last change: set | move | promote
    actor: str  # who made it (on PostgreSQL, the database role)
    label: str | None = None
    moved_at: datetime


class ConceptPlan(PlanModel):
    concept: str  # NAME@VERSION (or the name as asked, when the concept is unknown)
    status: ConceptStatus
    alias: AliasUse | None = None  # set when the chosen route is an alias's vector
    chosen: Route | None = None
    candidates: list[Route] = Field(default_factory=list)  # best first; chosen is the first
    why: str = ""  # why the chosen route won, or why there is none
    reasons: list[str] = Field(default_factory=list)  # routes considered and refused
    steps: list[PlanStep] = Field(default_factory=list)


class TargetInfo(PlanModel):
    name: str
    registered: bool
    model_id: int | None = None
    path: str | None = None
    n_layers: int | None = None
    d_model: int | None = None


class TransplantPlan(PlanModel):
    schema_version: Literal[1] = PLAN_SCHEMA_VERSION
    kind: Literal["crx.transplant-plan"] = PLAN_KIND
    created_at: datetime
    crx_version: str
    registry: str  # the database the plan was computed on (password redacted)
    last_audit_event: int  # the registry's state when planned
    target: TargetInfo
    concepts: list[ConceptPlan]
    # Steps of the target (register it) and of model pairs (fit maps), each listed once; a
    # concept's own steps (extract, transplant, evaluate) are in its ConceptPlan.
    steps: list[PlanStep] = Field(default_factory=list)


class PlanExecution(PlanModel):
    """What `crx transplant --plan` did, per concept."""

    concept: str
    status: Literal["registered", "existing", "skipped"]
    vector_id: int | None = None
    layer: int | None = None
    alpha: float | None = None
    normalize: bool | None = None
    detail: str = ""
