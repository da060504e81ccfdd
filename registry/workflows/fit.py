"""Fitting: affine maps source → target on a neutral corpus, one per layer pair, with metrics.

`fitted_row` is the one description of what a map row records about its fit (solver settings,
the layer-pair choice, held-out metrics), for ``crx fit`` and ``crx apply`` alike; `fitted_before`
finds an identical earlier fit among a list of maps (pure, so ``crx diff`` runs it on its
snapshot); `fit` computes what is missing and records it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crx.registry.errors import InvalidInput
from crx.registry.progress import StagedProgress, staged
from crx.registry.workflows.corpus import corpus_states, load_corpus
from crx.schemas.records import MapRecord, ModelRecord

if TYPE_CHECKING:
    from crx.registry.engine.fit import FittedMap
    from crx.registry.workflows.anchors import AnchorSet
    from crx.registry.workflows.workspace import Workspace

LayerPairs = list[tuple[int, int]] | str
_LAYER = re.compile(r"[0-9]{1,9}")


def parse_pairs(spec: str) -> LayerPairs:
    """``auto`` | ``all`` | ``LS:LT,LS:LT,...``."""
    if spec in ("auto", "all"):
        return spec
    pairs = []
    for item in spec.split(","):
        source, sep, target = item.strip().partition(":")
        # ASCII digits, at most 9 of them: int() of thousands of digits raises ValueError
        if not sep or not _LAYER.fullmatch(source.strip()) or not _LAYER.fullmatch(target.strip()):
            raise InvalidInput(f"layer pairs must be auto, all or LS:LT,...; not {spec[:80]!r}")
        pairs.append((int(source), int(target)))
    return pairs


def pairs_label(wanted: LayerPairs) -> str:
    """How a map row records the layer-pair choice it was fitted under."""
    return wanted if isinstance(wanted, str) else "explicit"


def fit_metrics(fm: FittedMap) -> dict[str, Any]:
    """The held-out metrics of a `FittedMap` as a map row records them."""
    return {
        "n_samples": fm.n_train + fm.n_val + fm.n_test,
        "r2": fm.r2,
        "mse": fm.mse,
        "cosine": fm.cosine,
        "metrics": {
            "r2_train": fm.r2_train,
            "r2_val": fm.r2_val,
            "n_train": fm.n_train,
            "n_val": fm.n_val,
            "n_test": fm.n_test,
        },
    }


def fitted_row(fm: FittedMap, label: str) -> dict[str, Any]:
    """Everything a map row records about its fit but the models, the blob and the corpus."""
    return {
        "source_layer": fm.source_layer,
        "target_layer": fm.target_layer,
        "solver_settings": {**fm.settings, "pairs": label},
        **fit_metrics(fm),
    }


def fitted_before(
    maps: Sequence[MapRecord],
    src: ModelRecord,
    tgt: ModelRecord,
    wanted: LayerPairs,
    solver: str,
    corpus_oid: str,
    precision: str | None = None,
    anchors_sha256: str | None = None,
) -> list[MapRecord]:
    """Among ``maps`` (src → tgt), those of an identical earlier fit; [] if none or only part.

    ``precision`` None accepts a fit in either precision (they agree to ~1e-6); a precision
    asked for explicitly needs maps fitted in it. An anchored fit is identical only with the
    same anchor set (``anchors_sha256``).
    """
    label = pairs_label(wanted)
    same = [
        m
        for m in maps
        if m.solver == solver
        and m.corpus_oid == corpus_oid
        and m.solver_settings.get("pairs") == label
        and precision in (None, m.solver_settings.get("dtype", "float64"))
        and m.solver_settings.get("anchors_sha256") == anchors_sha256
    ]
    found = {(m.source_layer, m.target_layer): m for m in same}
    if wanted == "auto":
        by_target = {m.target_layer: m for m in same}
        complete = len(by_target) == tgt.n_layers
        return [by_target[t] for t in sorted(by_target)] if complete else []
    pairs: list[tuple[int, int]] = (
        [(a, b) for a in range(src.n_layers) for b in range(tgt.n_layers)]
        if isinstance(wanted, str)
        else list(wanted)
    )
    return [found[p] for p in pairs] if all(p in found for p in pairs) else []


def compute(
    ws: Workspace,
    src: ModelRecord,
    tgt: ModelRecord,
    lines: Sequence[str],
    corpus_oid: str,
    wanted: LayerPairs,
    *,
    solver: str,
    precision: str | None = None,
    anchors: AnchorSet | None = None,
    batch_size: int = 32,
    progress: StagedProgress | None = None,
) -> list[FittedMap]:
    """Fit the maps of ``wanted`` on the corpus states of both models (cached per model);
    ``anchors``: the anchored solver's paired concept vectors (`workflows.anchors.anchor_set`).

    Explicit pairs capture and read only their own source and target layers; ``auto`` and
    ``all`` need every layer. The fit reads the cached states a layer at a time.
    Reports the stages of `corpus_states` for each model, then ``fit S -> T (solver, pairs)``.
    """
    from crx.registry.engine.fit import fit_pairs, resolve_precision
    from crx.registry.engine.fit.anchored import Anchors

    resolved = resolve_precision(solver, precision)
    src_layers = None if isinstance(wanted, str) else sorted({ls for ls, _ in wanted})
    tgt_layers = None if isinstance(wanted, str) else sorted({lt for _, lt in wanted})
    x = corpus_states(
        ws, src, lines, corpus_oid, layers=src_layers, batch_size=batch_size, progress=progress
    )
    y = corpus_states(
        ws, tgt, lines, corpus_oid, layers=tgt_layers, batch_size=batch_size, progress=progress
    )
    name = f"fit {src.name} -> {tgt.name} ({solver}, {pairs_label(wanted)})"
    return fit_pairs(
        x,
        y,
        wanted,
        solver=solver,
        precision=resolved,
        anchors=None
        if anchors is None
        else Anchors(anchors.source, anchors.target, anchors.groups),
        progress=staged(progress, name),
    )


def anchors_for(
    ws: Workspace,
    src: ModelRecord,
    tgt: ModelRecord,
    solver: str,
    exclude: Sequence[str],
    template: str | None = None,
) -> AnchorSet | None:
    """The anchored solver's anchor set (None for the other solvers, which refuse its options)."""
    if solver != "anchored":
        if exclude or template is not None:
            raise InvalidInput("--exclude and --anchor-template apply to the anchored solver only")
        return None
    from crx.registry.workflows.anchors import anchor_set

    return anchor_set(ws, src, tgt, exclude=exclude, template=template)


def anchored_settings(
    anchors: AnchorSet | None, exclude: Sequence[str], template: str | None = None
) -> dict[str, Any]:
    """What a map row records about its anchors (nothing for the other solvers)."""
    if anchors is None:
        return {}
    return {
        **anchors.settings(),
        "anchor_exclude": sorted(set(exclude)),
        "anchor_template": template,
    }


def fit(
    ws: Workspace,
    source: str,
    target: str,
    *,
    corpus: str | Path | None = None,
    pairs: str = "auto",
    solver: str = "ridge",
    precision: str | None = None,
    exclude: Sequence[str] = (),
    anchor_template: str | None = None,
    batch_size: int = 32,
    force: bool = False,
    progress: StagedProgress | None = None,
) -> list[MapRecord]:
    """Fit and record affine maps source → target on a neutral corpus.

    Maps already fitted with the same solver, layer-pair choice and corpus (and precision, when
    one is asked for; and anchor set, for ``anchored``) are returned as they are (content
    addressing); ``force`` fits again. ``precision``: the ridge sweep's product dtype, float32
    by default (`crx.registry.engine.fit`). ``exclude`` (``anchored``): concepts that must not
    anchor the maps, nor any concept sharing a contrast text with them (the ones the maps will
    transplant; `crx.registry.workflows.anchors`); ``anchor_template``: only the anchors
    registered with that template (`crx bank extract --template`).
    """
    from crx.registry.engine.fit import resolve_precision

    resolve_precision(solver, precision)  # a bad solver or precision fails before any work
    catalog = ws.catalog
    src, tgt = catalog.get_model(source), catalog.get_model(target)
    wanted = parse_pairs(pairs)
    for layer_s, layer_t in [] if isinstance(wanted, str) else wanted:
        # before the corpus blob is stored: a refused fit leaves nothing behind
        for model, layer in ((src, layer_s), (tgt, layer_t)):
            if layer >= model.n_layers:
                raise InvalidInput(
                    f"layer {layer} is out of range for {model.name} ({model.n_layers} layers)"
                )
    anchors = anchors_for(ws, src, tgt, solver, exclude, anchor_template)
    lines, corpus_bytes = load_corpus(corpus)
    corpus_oid = catalog.store.put(corpus_bytes)
    if not force:
        registered = catalog.list_maps(source=src.name, target=tgt.name, limit=0).items
        existing = fitted_before(
            registered,
            src,
            tgt,
            wanted,
            solver,
            corpus_oid,
            precision,
            None if anchors is None else anchors.digest,
        )
        if existing:
            return existing
    fitted = compute(
        ws,
        src,
        tgt,
        lines,
        corpus_oid,
        wanted,
        solver=solver,
        precision=precision,
        anchors=anchors,
        batch_size=batch_size,
        progress=progress,
    )
    label = pairs_label(wanted)
    extra = anchored_settings(anchors, exclude, anchor_template)
    lineage = [] if anchors is None else anchors.lineage
    out = []
    for fm in fitted:
        row = fitted_row(fm, label)
        row["solver_settings"].update(extra)
        out.append(
            catalog.save_map(
                src,
                tgt,
                weight=fm.weight,
                bias=fm.bias,
                solver=solver,
                corpus_oid=corpus_oid,
                anchors=lineage,
                **row,
            ).record
        )
    return out
