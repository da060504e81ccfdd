"""``crx demo``: the whole ConTrans pipeline on two real models, into the registry.

SmolLM2-135M-Instruct (aligned, source) → Gemma-3-270m (base, target): pull both, register the
six emotion concepts from RepE scenarios (training half of each emotion), extract on the source
and natively on the target, fit maps, transplant, evaluate base vs transplanted vs native on
the held-out half, and write a table and the paper's figure. Every step is content-addressed,
so a second run reuses what the first computed.

Each concept is transplanted twice: with crx's default maps (ridge, source layer by validation
R²) and with ConTrans' own recipe (SVD least squares, no bias, the pair of equal relative depth
0.75). Neither map wins for every concept (``benchmarks/README.md``), and a better fit does not
mean better steering, so both are evaluated: `crx plan` then routes each concept through the
transplant whose recorded evaluation is best.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crx.registry.progress import StagedProgress
from crx.registry.workflows import evaluate, extract, fit, transplant
from crx.registry.workflows.pull import pull_model

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog
    from crx.registry.workflows.workspace import Workspace

SOURCE = "smollm2-135m-instruct"
TARGET = "gemma3-270m"
ALPHAS = (0.05, 0.1, 0.2, 0.4)
#: The transplanted rows of the demo: label → (solver, only the steered layer?)
TRANSPLANTS = {"transplanted": ("ridge", False), "contrans_recipe": ("lstsq-svd", True)}
LEGEND = {
    "transplanted": "transplanted (crx maps)",
    "contrans_recipe": "transplanted (ConTrans recipe)",
    "native": "native",
}
PAIR_CONSTRUCTION = "repe-emotions-vs-others:holdout=0.5:seed=0"


def register_emotions(catalog: Catalog, emotions: Sequence[str]) -> dict[str, str]:
    """Register each emotion concept from the training half of the RepE scenarios."""
    from crx.registry.engine import emotion as task

    train = {e: task.split_scenarios(task.load_scenarios(e)).train for e in task.EMOTIONS}
    refs = {}
    for e in emotions:
        pairs = task.build_pairs(e, train)
        result = catalog.register_concept(
            e,
            pairs,
            template=task.TEMPLATE,
            pair_construction=PAIR_CONSTRUCTION,
            description=f"RepE {e} scenarios vs other emotions (training half)",
        )
        refs[e] = result.record.ref
    return refs


@dataclass
class DemoResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    plot: Path | None = None
    transplants: tuple[str, ...] = tuple(TRANSPLANTS)  # the transplanted columns, in order


def run(
    ws: Workspace,
    *,
    emotions: Sequence[str] | None = None,
    alphas: Sequence[float] = ALPHAS,
    out_dir: Path,
    progress: StagedProgress | None = None,
) -> DemoResult:
    from crx.registry.engine import emotion as task
    from crx.registry.engine.fit import relative_depth_pair

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda d, t: progress(name, d, t))

    emotions = list(emotions or task.EMOTIONS)
    source = pull_model(ws.catalog, SOURCE, progress=progress).registered.record
    target = pull_model(ws.catalog, TARGET, progress=progress).registered.record
    refs = register_emotions(ws.catalog, emotions)
    fit.fit(ws, source.name, target.name, progress=progress)
    layer = evaluate.default_layer(target.n_layers)
    paper_pair = f"{relative_depth_pair(source.n_layers, target.n_layers, layer)}:{layer}"
    fit.fit(ws, source.name, target.name, pairs=paper_pair, solver="lstsq-svd",
                 progress=progress)  # fmt: skip
    result = DemoResult()
    curves: dict[str, dict[float, list[float]]] = {label: {} for label in (*TRANSPLANTS, "native")}
    bases = []
    for e in emotions:
        src_vec = extract.extract(
            ws, refs[e], source.name, progress=stage(f"extract {e} on {source.name}")
        ).record
        native = extract.extract(
            ws, refs[e], target.name, progress=stage(f"extract {e} on {target.name}")
        ).record
        vectors = {
            label: transplant.transplant(
                ws,
                refs[e],
                source.name,
                target.name,
                vector_id=src_vec.id,
                solver=solver,
                layer=layer if one_layer else None,
            ).record
            for label, (solver, one_layer) in TRANSPLANTS.items()
        }
        vectors["native"] = native
        base = _metrics(
            evaluate.evaluate_emotion(
                ws,
                e,
                target.name,
                vector_id=None,
                alphas=[],
                progress=stage(f"evaluate {e}: base"),
            )
        )
        bases.append(base[None])
        row: dict[str, Any] = {"emotion": e, "base": base[None]}
        for label, vector in vectors.items():
            scores = _metrics(
                evaluate.evaluate_emotion(
                    ws,
                    e,
                    target.name,
                    vector_id=vector.id,
                    alphas=alphas,
                    layer=layer,
                    normalize=True,
                    progress=stage(f"evaluate {e}: {label}"),
                )
            )
            best = max(scores.values(), key=lambda m: (m["token_accuracy"], m["logit_accuracy"]))
            row[label] = {"best": best, "by_alpha": scores, "vector_id": vector.id}
            for alpha, metrics in scores.items():
                if alpha is None:
                    continue
                curves[label].setdefault(alpha, []).append(metrics["token_accuracy"])
        result.rows.append(row)
    from crx.registry.plot import accuracy_vs_alpha

    mean_base = sum(b["token_accuracy"] for b in bases) / len(bases)
    result.plot = accuracy_vs_alpha(
        {LEGEND[k]: {a: sum(v) / len(v) for a, v in c.items()} for k, c in curves.items()},
        base=mean_base,
        metric="token accuracy (mean of emotions)",
        title=f"{source.name} → {target.name}, layer {layer}, held-out scenarios",
        out=out_dir / "demo_emotions.png",
        alphas=alphas,
    )
    return result


def _metrics(records: Sequence[Any]) -> dict[float | None, dict[str, float]]:
    out: dict[float | None, dict[str, float]] = {}
    for r in records:
        out.setdefault(r.alpha, {})[r.metric] = r.value
    return out
