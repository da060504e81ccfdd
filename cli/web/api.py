"""The read-only JSON routes under ``/api``: the records ``crx ... --json`` prints, over HTTP.

Each route is one facade call; its response model is the record type the facade returns, so
``/openapi.json`` documents the same fields as the README's "JSON output". Lists the facade
pages come as ``{"items": [...], "next_after": ID or null}`` (keyset paging: pass ``after``
for the next page); ``limit`` is at most `MAX_LIMIT` rows, as a shared server must bound a
response. The functions are plain ``def``: FastAPI runs them in its thread pool, so a slow
database holds one thread, never the event loop.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from crx.schemas.governance import (
    AliasHistoryRecord,
    AliasRecord,
    ApprovalRecord,
    DeprecationRecord,
    Lineage,
    PolicyRecord,
)
from crx.schemas.plan import TransplantPlan
from crx.schemas.records import (
    AuditEventRecord,
    ConceptRecord,
    ConceptVersionRecord,
    EvaluationRecord,
    MapRecord,
    ModelRecord,
    Page,
    SchemaStatus,
    VectorRecord,
)

if TYPE_CHECKING:
    from crx.registry import Registry

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


async def registry(request: Request) -> Registry:
    # async: FastAPI runs a plain def dependency in its thread pool, one more thread hop per
    # request for a lookup that never blocks.
    return request.app.state.registry


Reg = Annotated["Registry", Depends(registry)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Rows per page (1 to {MAX_LIMIT}).")]
After = Annotated[
    int | None, Query(description="Start after this id (the previous page's next_after).")
]

router = APIRouter(prefix="/api")


# -- the registry ------------------------------------------------------------------------


@router.get("/registry", summary="Which registry this server reads (credentials redacted)")
def get_registry(reg: Reg) -> dict[str, Any]:
    status: SchemaStatus = reg.schema_status()
    return {
        "database": reg.db.display_url,
        "store": reg.store.display_url,
        "schema": status.model_dump(mode="json"),
    }


# -- models, concepts, vectors, maps, evaluations -----------------------------------------


@router.get("/models", summary="List models", response_model=Page[ModelRecord])
def list_models(reg: Reg, limit: Limit = DEFAULT_LIMIT, after: After = None) -> Any:
    return reg.list_models(limit=limit, after=after)


@router.get("/models/{ref}", summary="One model, by name or id", response_model=ModelRecord)
def get_model(reg: Reg, ref: str) -> Any:
    return reg.get_model(ref)


@router.get("/concepts", summary="List concepts", response_model=Page[ConceptRecord])
def list_concepts(reg: Reg, limit: Limit = DEFAULT_LIMIT, after: After = None) -> Any:
    return reg.list_concepts(limit=limit, after=after)


@router.get(
    "/concepts/{ref}/versions",
    summary="Every version of a concept, oldest first",
    response_model=list[ConceptVersionRecord],
)
def concept_versions(reg: Reg, ref: str) -> Any:
    return reg.concept_versions(ref)


@router.get(
    "/concepts/{ref}",
    summary="One concept version: NAME (the latest), NAME@V or NAME@ALIAS (with model)",
    response_model=ConceptVersionRecord,
)
def get_concept(
    reg: Reg,
    ref: str,
    model: Annotated[str | None, Query(description="The model a NAME@ALIAS is on.")] = None,
) -> Any:
    return reg.get_concept(ref, model)


@router.get("/vectors", summary="List concept vectors", response_model=Page[VectorRecord])
def list_vectors(
    reg: Reg,
    concept: Annotated[str | None, Query(description="Only vectors of this concept.")] = None,
    model: Annotated[str | None, Query(description="Only vectors on this model.")] = None,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
) -> Any:
    return reg.list_vectors(concept=concept, model=model, limit=limit, after=after)


@router.get("/vectors/{vector_id}", summary="One vector, by id", response_model=VectorRecord)
def get_vector(reg: Reg, vector_id: int) -> Any:
    return reg.get_vector(vector_id)


MEDIA_TYPES = {"safetensors": "application/octet-stream", "gguf": "application/octet-stream"}


@router.get(
    "/vectors/{vector_id}/download",
    summary="A vector's file, as `crx export vector ID --raw` writes it (safetensors or GGUF)",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_vector(
    reg: Reg,
    vector_id: int,
    format: Annotated[
        Literal["safetensors", "gguf"],
        Query(description="safetensors, or GGUF in llama.cpp's control-vector layout."),
    ] = "safetensors",
) -> Response:
    record = reg.get_vector(vector_id)
    # The facade writes files (atomically, as `crx export` does); a vector is at most a few
    # MB, so it is written to a private temporary folder and sent from memory. It is the raw
    # vector (`crx export vector ID --raw`): baking an evaluation's strength may need the
    # model loaded to measure a norm, which a request must not do.
    with tempfile.TemporaryDirectory(prefix="crx-serve-") as folder:
        path = Path(folder) / f"vector.{format}"
        reg.export_vector(vector_id, format, path, raw=True)
        content = path.read_bytes()
    name = f"{record.concept}-{record.concept_version}-{record.model}-{record.id}.{format}"
    return Response(
        content,
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/maps", summary="List affine maps between models", response_model=Page[MapRecord])
def list_maps(
    reg: Reg,
    source: Annotated[str | None, Query(description="Only maps from this model.")] = None,
    target: Annotated[str | None, Query(description="Only maps into this model.")] = None,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
) -> Any:
    return reg.list_maps(source=source, target=target, limit=limit, after=after)


@router.get("/maps/{map_id}", summary="One map, by id", response_model=MapRecord)
def get_map(reg: Reg, map_id: int) -> Any:
    return reg.get_map(map_id)


@router.get(
    "/evaluations", summary="List recorded evaluations", response_model=Page[EvaluationRecord]
)
def list_evaluations(
    reg: Reg,
    model: Annotated[str | None, Query(description="Only evaluations on this model.")] = None,
    vector: Annotated[int | None, Query(description="Only evaluations of this vector.")] = None,
    task: Annotated[str | None, Query(description="Only this task.")] = None,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
) -> Any:
    return reg.list_evaluations(model=model, vector_id=vector, task=task, limit=limit, after=after)


# -- the planner ------------------------------------------------------------------------


@router.get(
    "/plan",
    summary="The transplant plan for a target, as `crx plan --json` prints it",
    response_model=TransplantPlan,
)
def plan(
    reg: Reg,
    target: Annotated[str, Query(description="Target model: a registered name or a name.")],
    concept: Annotated[
        list[str] | None,
        Query(description="NAME[@V|@ALIAS], repeatable (default: as `crx plan`)."),
    ] = None,
    alias: Annotated[str | None, Query(description="Plan from this alias, not prod.")] = None,
    max_hops: Annotated[int, Query(ge=1, le=10, description="Longest chain of maps.")] = 3,
    min_r2: Annotated[float, Query(description="Refuse maps with held-out R² below.")] = 0.2,
) -> Any:
    return reg.plan(target, concept or (), max_hops=max_hops, min_r2=min_r2, alias=alias)


# -- governance --------------------------------------------------------------------------


@router.get("/aliases", summary="List aliases", response_model=list[AliasRecord])
def list_aliases(
    reg: Reg,
    model: Annotated[str | None, Query(description="Only aliases on this model.")] = None,
    concept: Annotated[str | None, Query(description="Only this concept's aliases.")] = None,
) -> Any:
    return reg.list_aliases(model=model, concept=concept)


@router.get(
    "/aliases/{concept}/history",
    summary="A concept's alias changes on a model, oldest first (or those in force at a date)",
    response_model=list[AliasHistoryRecord],
)
def alias_history(
    reg: Reg,
    concept: str,
    model: Annotated[str, Query(description="The target model.")],
    alias: Annotated[str | None, Query(description="Only this alias.")] = None,
    at: Annotated[
        str | None, Query(description="The change in force then (a date: its end, UTC).")
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
) -> Any:
    return reg.alias_history(concept, model, alias, at=at, limit=limit, after=after)


@router.get(
    "/aliases/{ref}",
    summary="Where CONCEPT@ALIAS points (with model, when several models have it)",
    response_model=AliasRecord,
)
def get_alias(
    reg: Reg,
    ref: str,
    model: Annotated[str | None, Query(description="The target model.")] = None,
) -> Any:
    return reg.get_alias(ref, model)


@router.get(
    "/approvals", summary="List approvals and rejections", response_model=list[ApprovalRecord]
)
def list_approvals(
    reg: Reg,
    model: Annotated[str | None, Query(description="Only on this model.")] = None,
    concept: Annotated[str | None, Query(description="Only this concept's.")] = None,
    vector: Annotated[int | None, Query(description="Only this vector's.")] = None,
) -> Any:
    return reg.list_approvals(model=model, concept=concept, vector_id=vector)


@router.get(
    "/deprecations", summary="List deprecated objects", response_model=list[DeprecationRecord]
)
def list_deprecations(reg: Reg) -> Any:
    return reg.list_deprecations()


@router.get("/policies", summary="List promotion policies", response_model=list[PolicyRecord])
def list_policies(reg: Reg) -> Any:
    return reg.list_policies()


@router.get("/policies/{name}", summary="One promotion policy", response_model=PolicyRecord)
def get_policy(reg: Reg, name: str) -> Any:
    return reg.get_policy(name)


@router.get(
    "/audit",
    summary="Search the audit trail, newest first (as `crx audit`)",
    response_model=Page[AuditEventRecord],
)
def audit(
    reg: Reg,
    object: Annotated[
        str | None,
        Query(description="vector:ID, map:ID, model:NAME, policy:NAME, NAME@V or NAME@ALIAS."),
    ] = None,
    model: Annotated[str | None, Query(description="Events concerning this model.")] = None,
    actor: Annotated[str | None, Query(description="Who acted.")] = None,
    action: Annotated[str | None, Query(description="An action or a prefix (alias.).")] = None,
    since: Annotated[str | None, Query(description="From this ISO 8601 date or time.")] = None,
    until: Annotated[str | None, Query(description="Up to this date (inclusive).")] = None,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
) -> Any:
    return reg.audit(
        object=object,
        model=model,
        actor=actor,
        action=action,
        since=since,
        until=until,
        limit=limit,
        after=after,
    )


@router.get(
    "/lineage", summary="Where a vector came from (as `crx lineage --json`)", response_model=Lineage
)
def lineage(
    reg: Reg,
    ref: Annotated[
        str | None, Query(description="NAME@V or NAME@ALIAS (with model), or vector:ID.")
    ] = None,
    model: Annotated[str | None, Query(description="The target model.")] = None,
    vector: Annotated[int | None, Query(description="Pick one vector by id.")] = None,
) -> Any:
    return reg.lineage(ref, model=model, vector_id=vector)
