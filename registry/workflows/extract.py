"""Extraction: a concept vector from a concept version's contrast pairs on one model.

`extraction_settings` is the one description of how a vector was extracted (recorded on the
vector row by ``crx extract`` and ``crx apply`` alike); `compute` runs the model; `extract`
resolves the names once, reuses an identical earlier extraction, and records the new vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from crx.registry.errors import InvalidInput
from crx.registry.pairs import ContrastPair
from crx.registry.progress import Progress, StagedProgress, staged
from crx.schemas.records import ConceptVersionRecord, ModelRecord, Registered, VectorRecord

if TYPE_CHECKING:
    from crx.registry.engine.loading import LoadedModel
    from crx.registry.workflows.workspace import Workspace

# ``--method`` as the user says it -> the estimator a vector row records.
ESTIMATORS = {"mean": "mean_diff", "pca": "pca"}


def check_method(method: str) -> str:
    """The estimator name of ``method``, or `InvalidInput` naming the known methods."""
    if method not in ESTIMATORS:
        raise InvalidInput(f"method must be one of {', '.join(ESTIMATORS)}, not {method!r}")
    return ESTIMATORS[method]


def extraction_settings(
    *, method: str, token: str, batch_size: int, n_pairs: int, template: str, loaded: str
) -> dict[str, Any]:
    """What a vector row records about how it was extracted; ``loaded``: where and as what
    the model ran (``"cpu, bfloat16"``), since a bf16 vector is not float32's."""
    return {
        "method": method,
        "token": token,
        "batch_size": batch_size,
        "n_pairs": n_pairs,
        "template": template,
        "loaded": loaded,
    }


def compute(
    loaded: LoadedModel,
    pairs: Sequence[ContrastPair],
    *,
    template: str,
    method: str,
    token: str,
    batch_size: int,
    progress: Progress | None = None,
) -> np.ndarray:
    """The ``[n_layers, d_model]`` concept vector of ``pairs`` on a loaded model."""
    from crx.registry.engine.extract import extract_vector

    return extract_vector(
        loaded,
        pairs,
        template=template,
        method=method,
        token=token,
        batch_size=batch_size,
        progress=progress,
    )


def extract(
    ws: Workspace,
    concept_ref: str,
    model: str,
    *,
    method: str = "mean",
    token: str = "last",
    batch_size: int = 32,
    force: bool = False,
    progress: StagedProgress | None = None,
) -> Registered[VectorRecord]:
    """Extract (or reuse) the concept vector of ``concept_ref`` on ``model``.

    Computing it reports the stages ``load MODEL`` (unless loaded already) and ``extract C on
    MODEL`` (texts: both sides of every pair); a reused vector reports nothing.
    """
    estimator = check_method(method)
    catalog = ws.catalog
    concept = catalog.get_concept(concept_ref, model)
    record = catalog.get_model(model)
    if not force:
        existing = catalog.find_vector(
            concept, record, origin="extracted", estimator=estimator, token=token
        )
        if existing is not None:
            return Registered[VectorRecord](record=existing, created=False)
    pairs = catalog.load_pairs(concept)
    loaded = ws.load(record, progress=progress)
    array = compute(
        loaded,
        pairs,
        template=concept.template,
        method=method,
        token=token,
        batch_size=batch_size,
        progress=staged(progress, f"extract {concept.ref} on {record.name}"),
    )
    return save_extracted(
        ws,
        concept,
        record,
        array,
        loaded=loaded,
        method=method,
        token=token,
        batch_size=batch_size,
        n_pairs=len(pairs),
        replace=force,
    )


def save_extracted(
    ws: Workspace,
    concept: ConceptVersionRecord,
    model: ModelRecord,
    array: np.ndarray,
    *,
    loaded: LoadedModel,
    method: str,
    token: str,
    batch_size: int,
    n_pairs: int,
    replace: bool,
) -> Registered[VectorRecord]:
    """Record a freshly extracted vector with its `extraction_settings`."""
    return ws.catalog.save_vector(
        concept,
        model,
        array,
        origin="extracted",
        token_position=token,
        estimator=check_method(method),
        replace=replace,
        settings=extraction_settings(
            method=method,
            token=token,
            batch_size=batch_size,
            n_pairs=n_pairs,
            template=concept.template,
            loaded=loaded.label,
        ),
    )
