"""Evaluation: a vector steering a model (or the bare model), scored and recorded.

The one home of the evaluation protocol, for ``crx evaluate``, ``crx apply``, ``crx diff`` and
``Registry.steer``/``load_plan``:

- `default_layer` / `steering_layer`: which block is steered, and the checks on it;
- `reference_norm`: what α is relative to with ``normalize`` (the layer's mean residual norm
  on the first 64 lines of the default corpus, first token left out). Relative α is the
  default everywhere (``normalize=True``; ``crx ... --absolute`` asks for absolute α), so α
  means the same on every model: 0.1 is a tenth of a typical residual;
- `emotion_protocol`: ConTrans' six-shot emotion task on the held-out half of the scenarios,
  its dataset document (and so its oid) and settings; `truthfulqa_protocol` likewise;
- `steered_settings`: what an evaluation row of a steered model records on top;
- `score_alphas`: the model steered at each α and measured;
- `evaluate`: the whole step on a registry, task dispatch included.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crx.registry.errors import InvalidInput
from crx.registry.hashing import canonical_json
from crx.registry.inputs import MIB, read_bytes
from crx.registry.progress import Progress, StagedProgress, offset, one_step, staged
from crx.registry.workflows.corpus import load_corpus
from crx.schemas.records import EvaluationRecord, ModelRecord, VectorRecord

if TYPE_CHECKING:
    from crx.registry.engine.loading import LoadedModel
    from crx.registry.workflows.workspace import Workspace

DEFAULT_LAYER_DEPTH = 0.75
NORM_LINES = 64
MAX_DATASET_BYTES = 256 * MIB
TASKS = ("emotion", "truthfulqa")
#: The α swept when none is given, relative to the layer's mean residual norm.
DEFAULT_ALPHAS = (0.05, 0.1, 0.2, 0.4)
#: One α when one is needed and nothing chose it (`crx generate`, `Registry.steer`, the
#: planner's "not evaluated" default), relative: a tenth of a typical residual.
DEFAULT_ALPHA = 0.1


def sweep_alphas(alphas: Sequence[float] | None, normalize: bool) -> list[float]:
    """The α to evaluate: ``alphas``, else `DEFAULT_ALPHAS` when relative. Absolute α has no
    default: its scale is the model's residual scale, which differs from model to model."""
    if alphas is not None:
        return [float(a) for a in alphas]
    if not normalize:
        raise InvalidInput(
            "absolute α has no default: give the strengths (--alpha A,B,...), whose scale is "
            "the model's own residual scale; without --absolute, α is relative to the layer's "
            "mean residual norm"
        )
    return list(DEFAULT_ALPHAS)


def default_layer(n_layers: int) -> int:
    """The block at relative depth 0.75 (ConTrans' choice; 13 of 18, 22 of 30, 24 of 32)."""
    return min(n_layers - 1, int(DEFAULT_LAYER_DEPTH * n_layers))


def steering_layer(vector: VectorRecord, model: ModelRecord, layer: int | None) -> int:
    """The block to steer ``model`` with ``vector`` at (default: depth 0.75), checked: the
    vector must belong to the model and have a direction at that block."""
    if vector.model != model.name:
        raise InvalidInput(f"vector {vector.id} belongs to {vector.model}, not {model.name}")
    chosen = default_layer(model.n_layers) if layer is None else layer
    # Checked here, before the residual norm of that block is measured for relative α.
    if not 0 <= chosen < model.n_layers:
        raise InvalidInput(f"layer {chosen} is out of range ({model.n_layers} layers)")
    if vector.layers is not None and chosen not in vector.layers:
        raise InvalidInput(
            f"vector {vector.id} has no direction at layer {chosen} (it has {vector.layers})"
        )
    return chosen


#: Per loaded model (its module, held weakly: a released model drops its entry), the norms
#: measured: the same weights on the same lines give the same norm, and `crx demo` asks for
#: one layer's 24 times (4.5 s each on Gemma-3-270m).
_NORMS: weakref.WeakKeyDictionary[Any, dict[int, float]] = weakref.WeakKeyDictionary()


def reference_norm(loaded: LoadedModel, layer: int) -> float:
    """Mean residual norm of ``layer`` on the first lines of the default corpus (measured once
    per loaded model and layer)."""
    from crx.registry.engine.steer import residual_norm

    known = _NORMS.setdefault(loaded.model, {})
    if layer not in known:
        lines, _ = load_corpus(None)
        known[layer] = residual_norm(loaded, lines[:NORM_LINES], layer)
    return known[layer]


@dataclass(frozen=True)
class Protocol:
    """One task's data as an evaluation row records it, and how to score a loaded model."""

    task: str
    document: bytes  # the exact bytes the dataset oid is the sha256 of
    settings: dict[str, Any]
    n: int
    score: Callable[[LoadedModel, Progress | None], dict[str, float]]

    @property
    def dataset_oid(self) -> str:
        return hashlib.sha256(self.document).hexdigest()


def emotion_protocol(emotion: str, *, holdout: float = 0.5, batch_size: int = 16) -> Protocol:
    """ConTrans' six-shot emotion accuracy on the held-out ``holdout`` share of the scenarios."""
    from crx.registry.engine import emotion as task

    test = task.split_scenarios(task.load_scenarios(emotion), holdout).test
    return Protocol(
        task="emotion",
        document=canonical_json({"task": "emotion", "emotion": emotion, "scenarios": test}),
        settings={
            "emotion": emotion,
            "holdout": holdout,
            "split": "sha256-sorted",
            "protocol": "contrans-6shot",
            "n_test": len(test),
        },
        n=len(test),
        score=lambda loaded, progress: task.accuracy(
            loaded, emotion, test, batch_size=batch_size, progress=progress
        ),
    )


def truthfulqa_protocol(
    data: str | Path, *, primer: bool = False, limit: int | None = None
) -> Protocol:
    """MC1/MC2 by answer log-likelihood on a TruthfulQA-format CSV (its bytes are the dataset)."""
    from crx.registry.engine import truthfulqa

    raw = read_bytes(data, limit=MAX_DATASET_BYTES, what="TruthfulQA data")
    try:
        questions = truthfulqa.parse_questions(raw.decode("utf-8"), str(data))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"cannot read TruthfulQA data {data}: {exc}") from None
    questions = questions[:limit] if limit else questions
    return Protocol(
        task="truthfulqa",
        document=raw,
        settings={"primer": primer, "n_questions": len(questions), "scoring": "sum-logprob"},
        n=len(questions),
        score=lambda loaded, progress: truthfulqa.evaluate(
            loaded, questions, primer=primer, progress=progress
        ),
    )


def steered_settings(
    protocol: Protocol, *, normalize: bool, norm: float | None, scope: str | None = "all"
) -> dict[str, Any]:
    """The settings an evaluation row of a steered model records."""
    extra: dict[str, Any] = {"normalize": normalize, "reference_norm": norm}
    if scope is not None:
        extra["scope"] = scope
    return {**protocol.settings, **extra}


def score_alphas(
    loaded: LoadedModel,
    array: np.ndarray,
    protocol: Protocol,
    *,
    layer: int,
    alphas: Sequence[float],
    normalize: bool,
    norm: float | None,
    progress: Progress | None = None,
) -> list[tuple[float, dict[str, float]]]:
    """``(α, metrics)`` of ``loaded`` steered with ``array`` at ``layer``, for each α.

    ``progress(done, total)`` counts the protocol's items over every α (total ``n × len(α)``).
    """
    from crx.registry.engine.steer import steer

    results = []
    total = protocol.n * len(alphas)
    for k, alpha in enumerate(alphas):
        with steer(
            loaded.layers,
            array,
            layer=layer,
            alpha=alpha,
            normalize=normalize,
            reference_norm=norm,
            d_model=loaded.d_model,
        ):
            scored = protocol.score(loaded, offset(progress, k * protocol.n, total))
            results.append((float(alpha), scored))
    return results


def _recorded(
    ws: Workspace, model: str, vector_id: int | None, protocol: Protocol
) -> dict[tuple[float | None, int | None, bool | None], list[EvaluationRecord]]:
    """Results already recorded for this subject and dataset, by (α, layer, normalize)."""
    found: dict[tuple[float | None, int | None, bool | None], list[EvaluationRecord]] = {}
    recorded = ws.catalog.list_evaluations(
        model=model, vector_id=vector_id, task=protocol.task, limit=0
    )
    for r in recorded.items:
        if r.dataset_oid != protocol.dataset_oid or (vector_id is None and r.vector_id is not None):
            continue
        if vector_id is None:
            key: tuple[float | None, int | None, bool | None] = (None, None, None)
        else:
            key = (r.alpha, r.layers[0] if r.layers else None, bool(r.settings.get("normalize")))
        found.setdefault(key, []).append(r)
    return found


def evaluate_protocol(
    ws: Workspace,
    protocol: Protocol,
    model: str | ModelRecord,
    *,
    vector_id: int | None,
    alphas: Sequence[float] = (),
    layer: int | None = None,
    normalize: bool = True,
    reuse: bool = True,
    scope: str | None = "all",
    progress: StagedProgress | None = None,
    stage: str | None = None,
) -> list[EvaluationRecord]:
    """The bare model (``vector_id`` None) or a vector at each α, scored and recorded.

    α is relative to the layer's mean residual norm unless ``normalize`` is False (the row's
    ``settings.normalize`` records which). With ``reuse``, results recorded before for the
    same subject, dataset, α, layer and ``normalize`` are returned instead of computed again.
    What is computed reports the stages ``load MODEL`` (unless loaded), ``norm MODEL@LAYER``
    (with ``normalize``) and ``stage`` (default ``evaluate MODEL: base`` or ``evaluate MODEL:
    vector ID``; items over every α).
    """
    catalog = ws.catalog
    record = model if isinstance(model, ModelRecord) else catalog.get_model(model)
    catalog.store.put(protocol.document)
    done = _recorded(ws, record.name, vector_id, protocol) if reuse else {}
    name = stage or f"evaluate {record.name}: " + (
        "base" if vector_id is None else f"vector {vector_id}"
    )
    if vector_id is None:
        if (None, None, None) in done:
            return done[(None, None, None)]
        loaded = ws.load(record, progress=progress)
        metrics = protocol.score(loaded, staged(progress, name))
        return catalog.record_evaluation(
            record.name,
            protocol.task,
            metrics,
            dataset_oid=protocol.dataset_oid,
            n=protocol.n,
            settings=protocol.settings,
        )
    steer_layer = steering_layer(catalog.get_vector(vector_id), record, layer)
    todo = [a for a in alphas if (float(a), steer_layer, normalize) not in done]
    computed: dict[float, dict[str, float]] = {}
    norm = None
    if todo:
        # Only now is there something to compute: load the model and measure its norm.
        loaded = ws.load(record, progress=progress)
        if normalize:
            finished = one_step(progress, f"norm {record.name}@{steer_layer}")
            norm = reference_norm(loaded, steer_layer)
            finished()
        array = catalog.load_vector(vector_id)
        computed = dict(
            score_alphas(
                loaded,
                array,
                protocol,
                layer=steer_layer,
                alphas=todo,
                normalize=normalize,
                norm=norm,
                progress=staged(progress, name),
            )
        )
    results: list[EvaluationRecord] = []
    for alpha in alphas:
        key = (float(alpha), steer_layer, normalize)
        if key in done:
            results += done[key]
            continue
        results += catalog.record_evaluation(
            record.name,
            protocol.task,
            computed[float(alpha)],
            vector_id=vector_id,
            dataset_oid=protocol.dataset_oid,
            layers=[steer_layer],
            alpha=alpha,
            n=protocol.n,
            settings=steered_settings(protocol, normalize=normalize, norm=norm, scope=scope),
        )
    return results


def evaluate(
    ws: Workspace,
    concept_ref: str,
    model: str,
    *,
    task: str = "emotion",
    data: str | Path | None = None,
    primer: bool = False,
    vector_id: int | None = None,
    alphas: Sequence[float] | None = None,
    layer: int | None = None,
    normalize: bool = True,
    with_base: bool = False,
    progress: StagedProgress | None = None,
) -> list[EvaluationRecord]:
    """``crx evaluate``: a concept's vector on ``model`` (default: its newest vector there) at
    each α, and with ``with_base`` the bare model first, on ``task``.

    α is relative to the layer's mean residual norm (default `DEFAULT_ALPHAS`); with
    ``normalize=False`` it is absolute and ``alphas`` must be given."""
    alphas = sweep_alphas(alphas, normalize)
    catalog = ws.catalog
    concept = catalog.get_concept(concept_ref, model)
    record = catalog.get_model(model)
    if task not in TASKS:
        raise InvalidInput(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if vector_id is None:
        vector_id = catalog.vector_for(concept_ref, record.name).id
    if task == "truthfulqa":
        if data is None:
            raise InvalidInput("--task truthfulqa needs --data FILE")
        protocol = truthfulqa_protocol(data, primer=primer)
    else:
        protocol = emotion_protocol(concept.concept)

    # TruthfulQA rows were never reused (their data file is the user's), and carry no scope.
    reuse = task == "emotion"
    scope = "all" if task == "emotion" else None
    records: list[EvaluationRecord] = []
    if with_base:
        records += evaluate_protocol(
            ws,
            protocol,
            record,
            vector_id=None,
            reuse=reuse,
            progress=progress,
            stage=f"evaluate {concept.ref} on {record.name}: base",
        )
    records += evaluate_protocol(
        ws,
        protocol,
        record,
        vector_id=vector_id,
        alphas=alphas,
        layer=layer,
        normalize=normalize,
        reuse=reuse,
        scope=scope,
        progress=progress,
        stage=f"evaluate {concept.ref} on {record.name}: vector {vector_id}",
    )
    return records


def evaluate_emotion(
    ws: Workspace,
    emotion: str,
    model: str | ModelRecord,
    *,
    vector_id: int | None,
    alphas: Sequence[float] = (),
    layer: int | None = None,
    normalize: bool = True,
    holdout: float = 0.5,
    batch_size: int = 16,
    progress: StagedProgress | None = None,
    stage: str | None = None,
) -> list[EvaluationRecord]:
    """Six-shot emotion accuracy on held-out scenarios: the bare model, or a vector at each α
    (relative to the layer's mean residual norm unless ``normalize`` is False).

    ``progress`` and ``stage``: as `evaluate_protocol`'s.
    """
    return evaluate_protocol(
        ws,
        emotion_protocol(emotion, holdout=holdout, batch_size=batch_size),
        model,
        vector_id=vector_id,
        alphas=alphas,
        layer=layer,
        normalize=normalize,
        progress=progress,
        stage=stage,
    )


def evaluate_truthfulqa(
    ws: Workspace,
    model: str | ModelRecord,
    data: str | Path,
    *,
    vector_id: int | None,
    alphas: Sequence[float] = (),
    layer: int | None = None,
    normalize: bool = True,
    primer: bool = False,
    limit: int | None = None,
    progress: StagedProgress | None = None,
) -> list[EvaluationRecord]:
    """TruthfulQA MC1/MC2 of the bare model, or of a steering vector at each α (relative to
    the layer's mean residual norm unless ``normalize`` is False)."""
    return evaluate_protocol(
        ws,
        truthfulqa_protocol(data, primer=primer, limit=limit),
        model,
        vector_id=vector_id,
        alphas=alphas,
        layer=layer,
        normalize=normalize,
        reuse=False,
        scope=None,
        progress=progress,
    )


def current_dataset(task: str, concept: str) -> str | None:
    """The oid of the dataset crx evaluates ``task`` on for ``concept`` today: the emotion
    task's held-out scenarios; None where crx does not fix the data (TruthfulQA's is a file)."""
    from crx.registry.engine.emotion import EMOTIONS

    if task == "emotion" and concept in EMOTIONS:
        return emotion_protocol(concept).dataset_oid
    return None
