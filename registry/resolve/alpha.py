"""Choosing α (and the layer) for a vector on a target from the evaluations recorded for it.

Each task has a primary metric (emotion: token accuracy; truthfulqa: MC2). Among the recorded
(α, layer, normalize) settings of the vector, the one with the best primary metric wins; a tie
goes to the smaller |α|, the gentler push that disturbs fluency least. The bare target's value on
the same data is reported beside it, so "the best α did not beat the base" is visible. A row at
α = 0 (the vector not applied) is never chosen. Each row's ``settings.normalize`` says whether
its α was relative (crx's default) or absolute, and the choice keeps it: a row recorded before
relative α was the default (``normalize`` absent or false) is read as absolute, as it was. With
no evaluation the default is α = 0.1 relative to the layer's mean residual norm, marked "not
evaluated".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from crx.registry.resolve.view import EvaluationFact
from crx.registry.workflows.evaluate import DEFAULT_ALPHA
from crx.schemas.plan import AlphaChoice

PRIMARY_METRIC = {"emotion": "token_accuracy", "truthfulqa": "mc2"}


def default_alpha(note: str = "") -> AlphaChoice:
    return AlphaChoice(
        alpha=DEFAULT_ALPHA,
        normalize=True,
        evaluated=False,
        note=note or f"not evaluated: default {DEFAULT_ALPHA:g} × the layer's mean residual norm",
    )


def primary_metric(task: str, metrics: Sequence[str]) -> str:
    return PRIMARY_METRIC.get(task) or sorted(metrics)[0]


def best_alpha(
    vector_id: int, evaluations: Sequence[EvaluationFact], *, layer: int | None = None
) -> tuple[AlphaChoice, int | None]:
    """(α choice, the layer it was measured at) for ``vector_id`` from ``evaluations``.

    ``layer`` restricts the choice to one layer. Returns the default (layer None) when the
    vector has no usable evaluation.
    """
    own = [
        e
        for e in evaluations
        if e.vector_id == vector_id
        and e.alpha is not None
        and e.alpha != 0  # the vector not applied: the bare model's value, not a choice
        and (layer is None or e.layer is None or e.layer == layer)
    ]
    if not own:
        return default_alpha(), None
    # The task evaluated most often for this vector is the one its α is chosen on.
    task = Counter(e.task for e in own).most_common(1)[0][0]
    metric = primary_metric(task, [e.metric for e in own if e.task == task])
    rows = [e for e in own if e.task == task and e.metric == metric]
    if not rows:
        return default_alpha(), None
    best = min(rows, key=lambda e: (-e.value, abs(e.alpha or 0.0), e.id))
    base = [
        e.value
        for e in evaluations
        if e.vector_id is None
        and e.task == task
        and e.metric == metric
        and e.dataset_oid == best.dataset_oid
    ]
    base_value = base[-1] if base else None
    # The α tried in the winner's own unit: relative and absolute values do not compare.
    tried = sorted(
        {
            e.alpha
            for e in rows
            if e.alpha is not None
            and e.dataset_oid == best.dataset_oid
            and e.normalize == best.normalize
        }
    )
    unit = "× residual norm" if best.normalize else "(absolute)"
    note = f"best {metric} over α {', '.join(f'{a:g}' for a in tried)} {unit}"
    if base_value is not None and best.value <= base_value:
        note += f"; no α beat the bare model ({base_value:.3f})"
    return (
        AlphaChoice(
            alpha=float(best.alpha or 0.0),
            normalize=best.normalize,
            evaluated=True,
            task=task,
            metric=metric,
            value=best.value,
            base_value=base_value,
            n=best.n,
            dataset_oid=best.dataset_oid,
            alphas_tried=tried,
            note=note,
            evaluation_id=best.id,
        ),
        best.layer,
    )
