"""ConTrans workflows on a `Registry`: extract, fit, transplant, evaluate (compute + record).

Each step is content-addressed so a second run reuses what is already computed: an extraction
is keyed by (concept version, model, hook point, token, estimator); a fit by (source, target,
layer pair, solver settings, corpus oid); corpus states are cached per (model, corpus oid).
Torch is imported only by the functions that compute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crx.registry.config import crx_home
from crx.registry.errors import CrxError, InvalidInput, NotFound, VectorNotFound
from crx.registry.hashing import canonical_json
from crx.schemas.records import EvaluationRecord, MapRecord, ModelRecord, Registered, VectorRecord

if TYPE_CHECKING:
    from crx.registry.api import Registry
    from crx.registry.engine.loading import LoadedModel

Progress = Callable[[int, int], None]
ESTIMATORS = {"mean": "mean_diff", "pca": "pca"}
DEFAULT_LAYER_DEPTH = 0.75


def default_layer(n_layers: int) -> int:
    """The block at relative depth 0.75 (ConTrans' choice; 13 of 18, 22 of 30, 24 of 32)."""
    return min(n_layers - 1, int(DEFAULT_LAYER_DEPTH * n_layers))


# -- models ---------------------------------------------------------------------------------


def load(reg: Registry, model: str | ModelRecord, *, device: str | None = None) -> LoadedModel:
    """Load a registered model (cached on the registry object for the rest of the session)."""
    from crx.registry.engine.loading import load_model

    record = model if isinstance(model, ModelRecord) else reg.get_model(model)
    cache: dict[str, LoadedModel] = reg.__dict__.setdefault("_loaded_models", {})
    if record.name not in cache:
        loaded = load_model(
            record.path,
            name=record.name,
            gguf_file=record.gguf_file,
            gguf_sha256=record.weights_sha256,
            revision=record.revision,
            device=device,
        )
        if loaded.n_layers != record.n_layers or loaded.d_model != record.d_model:
            raise InvalidInput(
                f"model {record.name} loads with {loaded.n_layers} layers x {loaded.d_model}, "
                f"but is registered as {record.n_layers} x {record.d_model}"
            )
        cache[record.name] = loaded
    return cache[record.name]


# -- extraction -----------------------------------------------------------------------------


def extract(
    reg: Registry,
    concept_ref: str,
    model: str,
    *,
    method: str = "mean",
    token: str = "last",
    batch_size: int = 32,
    force: bool = False,
    progress: Progress | None = None,
) -> Registered[VectorRecord]:
    """Extract (or reuse) the concept vector of ``concept_ref`` on ``model``."""
    from crx.registry.engine.extract import METHODS, extract_vector

    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    concept = reg.get_concept(concept_ref)
    record = reg.get_model(model)
    estimator = ESTIMATORS[method]
    if not force:
        existing = find_vector(
            reg, concept.ref, record.name, origin="extracted", estimator=estimator, token=token
        )
        if existing is not None:
            return Registered[VectorRecord](record=existing, created=False)
    loaded = load(reg, record)
    pairs = reg.load_pairs(concept.ref)
    array = extract_vector(
        loaded,
        pairs,
        template=concept.template,
        method=method,
        token=token,
        batch_size=batch_size,
        progress=progress,
    )
    return reg.save_vector(
        concept.ref,
        record.name,
        array,
        origin="extracted",
        token_position=token,
        estimator=estimator,
        replace=force,
        settings={
            "method": method,
            "token": token,
            "batch_size": batch_size,
            "n_pairs": len(pairs),
            "template": concept.template,
        },
    )


def find_vector(
    reg: Registry,
    concept_ref: str,
    model: str,
    *,
    origin: str | None = None,
    estimator: str | None = None,
    token: str | None = None,
) -> VectorRecord | None:
    """The newest vector of ``concept_ref`` (that exact version) on ``model`` matching filters."""
    concept = reg.get_concept(concept_ref)
    vectors = reg.list_vectors(concept=concept.concept, model=model, limit=0).items
    for vector in reversed(vectors):
        if vector.concept_version != concept.version:
            continue
        if origin and vector.origin != origin:
            continue
        if estimator and vector.estimator != estimator:
            continue
        if token and vector.token_position != token:
            continue
        return vector
    return None


# -- the calibration corpus -----------------------------------------------------------------


def contrans_corpus(text: str, *, seed: int = 42) -> list[str]:
    """ConTrans' processing of WikiSplit: each line cut by 2-4 trailing words (numpy seed 42)."""
    rng = np.random.RandomState(seed)
    lines = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        cut = int(rng.randint(2, 5))
        kept = words[:-cut] if len(words) > cut else words[:1]
        lines.append(" ".join(kept))
    return lines


def load_corpus(path: str | Path | None) -> tuple[list[str], bytes]:
    """(lines, the exact bytes they are hashed as): the shipped WikiSplit copy by default."""
    if path is None:
        from importlib import resources

        raw = resources.files("crx.registry").joinpath("data", "wiki_split.txt").read_text("utf-8")
        lines = contrans_corpus(raw)
    else:
        try:
            lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read corpus {path}: {exc}") from None
        lines = [ln for ln in lines if ln]
    if len(lines) < 20:
        raise InvalidInput(f"the corpus has {len(lines)} lines; a map needs at least 20")
    return lines, "\n".join(lines).encode("utf-8")


def _states_path(model: ModelRecord, corpus_oid: str) -> Path:
    # A config does not identify weights (a fine-tune keeps its base model's config.json), so
    # without a weights hash the key is the model's location plus its config.
    identity = (
        model.weights_sha256
        or hashlib.sha256(
            canonical_json([model.path, model.gguf_file, model.revision, model.config_sha256])
        ).hexdigest()
    )
    return crx_home() / "cache" / "states" / f"{identity[:32]}-{corpus_oid[:32]}.safetensors"


def cached_states(model: ModelRecord, corpus_oid: str) -> Any:
    """The corpus states `corpus_states` cached for this model and corpus, or None."""
    from safetensors.torch import load_file

    cache = _states_path(model, corpus_oid)
    return load_file(str(cache))["states"] if cache.exists() else None


def corpus_states(
    reg: Registry,
    model: ModelRecord,
    lines: Sequence[str],
    corpus_oid: str,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Any:
    """Last-token states of every corpus line at every block, cached under ``$CRX_HOME``."""
    import torch
    from safetensors.torch import load_file, save_file

    from crx.registry.engine.capture import residual_states

    cache = _states_path(model, corpus_oid)
    if cache.exists():
        return load_file(str(cache))["states"]
    states = residual_states(load(reg, model), lines, batch_size=batch_size, progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    temp = cache.with_suffix(".tmp")
    save_file({"states": states.contiguous()}, str(temp))
    temp.replace(cache)
    return torch.as_tensor(states)


# -- fitting --------------------------------------------------------------------------------


def _fitted_before(
    reg: Registry,
    src: ModelRecord,
    tgt: ModelRecord,
    wanted: list[tuple[int, int]] | str,
    solver: str,
    corpus_oid: str,
    precision: str | None = None,
) -> list[MapRecord]:
    """The maps of an identical earlier fit, or [] if it did not happen (or only in part).

    ``precision`` None accepts a fit in either precision (they agree to ~1e-6); a precision
    asked for explicitly needs maps fitted in it.
    """
    label = wanted if isinstance(wanted, str) else "explicit"
    maps = [
        m
        for m in reg.list_maps(source=src.name, target=tgt.name, limit=0).items
        if m.solver == solver
        and m.corpus_oid == corpus_oid
        and m.solver_settings.get("pairs") == label
        and precision in (None, m.solver_settings.get("dtype", "float64"))
    ]
    found = {(m.source_layer, m.target_layer): m for m in maps}
    if wanted == "auto":
        by_target = {m.target_layer: m for m in maps}
        complete = len(by_target) == tgt.n_layers
        return [by_target[t] for t in sorted(by_target)] if complete else []
    pairs: list[tuple[int, int]] = (
        [(a, b) for a in range(src.n_layers) for b in range(tgt.n_layers)]
        if isinstance(wanted, str)
        else list(wanted)
    )
    return [found[p] for p in pairs] if all(p in found for p in pairs) else []


def parse_pairs(spec: str) -> list[tuple[int, int]] | str:
    """``auto`` | ``all`` | ``LS:LT,LS:LT,...``."""
    if spec in ("auto", "all"):
        return spec
    pairs = []
    for item in spec.split(","):
        source, sep, target = item.strip().partition(":")
        if not sep or not source.strip().isdigit() or not target.strip().isdigit():
            raise InvalidInput(f"layer pairs must be auto, all or LS:LT,...; not {spec!r}")
        pairs.append((int(source), int(target)))
    return pairs


def fit_metrics(fm: Any) -> dict[str, Any]:
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


def fit(
    reg: Registry,
    source: str,
    target: str,
    *,
    corpus: str | Path | None = None,
    pairs: str = "auto",
    solver: str = "ridge",
    precision: str | None = None,
    batch_size: int = 32,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[MapRecord]:
    """Fit and record affine maps source → target on a neutral corpus.

    Maps already fitted with the same solver, layer-pair choice and corpus (and precision, when
    one is asked for) are returned as they are (content addressing); ``force`` fits again.
    ``precision``: the ridge sweep's product dtype, float32 by default (`crx.registry.engine.fit`).
    """
    from crx.registry.engine.fit import fit_pairs, resolve_precision

    resolved = resolve_precision(solver, precision)
    src, tgt = reg.get_model(source), reg.get_model(target)
    wanted = parse_pairs(pairs)
    lines, corpus_bytes = load_corpus(corpus)
    corpus_oid = reg.store.put(corpus_bytes)

    if not force:
        existing = _fitted_before(reg, src, tgt, wanted, solver, corpus_oid, precision)
        if existing:
            return existing

    def stage(name: str) -> Progress | None:
        return None if progress is None else (lambda done, total: progress(name, done, total))

    x = corpus_states(
        reg, src, lines, corpus_oid, batch_size=batch_size, progress=stage(f"states {src.name}")
    )
    y = corpus_states(
        reg, tgt, lines, corpus_oid, batch_size=batch_size, progress=stage(f"states {tgt.name}")
    )
    fitted = fit_pairs(x, y, wanted, solver=solver, precision=resolved, progress=stage("fit"))
    records = []
    for fm in fitted:
        settings = {**fm.settings, "pairs": pairs if isinstance(wanted, str) else "explicit"}
        records.append(
            reg.save_map(
                src.name,
                tgt.name,
                fm.source_layer,
                fm.target_layer,
                fm.weight,
                fm.bias,
                solver=solver,
                solver_settings=settings,
                corpus_oid=corpus_oid,
                **fit_metrics(fm),
            ).record
        )
    return records


# -- transplanting --------------------------------------------------------------------------


def choose_maps(
    maps: Sequence[MapRecord], *, layer: int | None, solver: str | None, pairs: str | None = None
) -> dict[int, MapRecord]:
    """Per target layer, the map with the best held-out R² (optionally one layer / solver)."""
    chosen: dict[int, MapRecord] = {}
    for m in maps:
        if layer is not None and m.target_layer != layer:
            continue
        if solver is not None and m.solver != solver:
            continue
        if pairs is not None and m.solver_settings.get("pairs") != pairs:
            continue
        best = chosen.get(m.target_layer)
        score = m.r2 if m.r2 is not None else float("-inf")
        if best is None or score > (best.r2 if best.r2 is not None else float("-inf")):
            chosen[m.target_layer] = m
    return chosen


def transplant(
    reg: Registry,
    concept_ref: str,
    source: str,
    target: str,
    *,
    layer: int | None = None,
    solver: str | None = None,
    vector_id: int | None = None,
) -> Registered[VectorRecord]:
    """Map the source model's vector of a concept into the target with the stored maps."""
    from crx.registry.engine.fit import map_vector

    concept = reg.get_concept(concept_ref)
    src, tgt = reg.get_model(source), reg.get_model(target)
    if vector_id is not None:
        source_vector = reg.get_vector(vector_id)
        if source_vector.model != src.name or source_vector.concept_version_id != concept.id:
            raise InvalidInput(f"vector {vector_id} is not a vector of {concept.ref} on {src.name}")
    else:
        found = find_vector(reg, concept.ref, src.name, origin="extracted")
        if found is None:
            raise VectorNotFound(
                f"{concept.ref} on {src.name} (run `crx extract {concept.ref} --model {src.name}`)"
            )
        source_vector = found
    if layer is not None and not 0 <= layer < tgt.n_layers:
        raise InvalidInput(f"layer {layer} is out of range for {tgt.name} ({tgt.n_layers} layers)")
    chosen = choose_maps(
        reg.list_maps(source=src.name, target=tgt.name, limit=0).items, layer=layer, solver=solver
    )
    if not chosen:
        where = f" at layer {layer}" if layer is not None else ""
        raise NotFound(
            f"no map from {src.name} to {tgt.name}{where} "
            f"(run `crx fit --source {src.name} --target {tgt.name}`)"
        )
    vs = reg.load_vector(source_vector.id)
    out = np.zeros((tgt.n_layers, tgt.d_model), dtype=np.float32)
    for lt, m in sorted(chosen.items()):
        weight, _bias = reg.load_map(m.id)  # the bias cancels for a difference of states
        out[lt] = map_vector(weight, vs[m.source_layer])
    map_ids = [chosen[lt].id for lt in sorted(chosen)]
    return reg.save_vector(
        concept.ref,
        tgt.name,
        out,
        origin="mapped",
        token_position=source_vector.token_position,
        estimator=source_vector.estimator,
        layers=sorted(chosen),
        lineage_key=f"v{source_vector.id}:m" + ",".join(map(str, map_ids)),
        source_vector_id=source_vector.id,
        map_ids=map_ids,
        settings={
            "maps": {str(lt): chosen[lt].id for lt in sorted(chosen)},
            "source_layers": {str(lt): chosen[lt].source_layer for lt in sorted(chosen)},
        },
    )


# -- steering and evaluation ----------------------------------------------------------------


def steering_layer(reg: Registry, model: ModelRecord, vector_id: int, layer: int | None) -> int:
    """The block to steer with vector ``vector_id`` on ``model`` (default: depth 0.75), checked:
    the vector must belong to the model and have a direction at that block."""
    vector = reg.get_vector(vector_id)
    if vector.model != model.name:
        raise InvalidInput(f"vector {vector_id} belongs to {vector.model}, not {model.name}")
    chosen = default_layer(model.n_layers) if layer is None else layer
    if vector.layers is not None and chosen not in vector.layers:
        raise InvalidInput(
            f"vector {vector_id} has no direction at layer {chosen} (it has {vector.layers})"
        )
    return chosen


def reference_norm(reg: Registry, model: str, layer: int, *, n_lines: int = 64) -> float:
    """Mean residual norm of ``layer`` on the first lines of the default corpus."""
    from crx.registry.engine.steer import residual_norm

    lines, _ = load_corpus(None)
    return residual_norm(load(reg, model), lines[:n_lines], layer)


def _recorded(
    reg: Registry, model: str, vector_id: int | None, dataset_oid: str
) -> dict[tuple[float | None, int | None, bool | None], list[EvaluationRecord]]:
    """Emotion results already recorded for this subject and dataset, by (α, layer, normalize)."""
    found: dict[tuple[float | None, int | None, bool | None], list[EvaluationRecord]] = {}
    recorded = reg.list_evaluations(model=model, vector_id=vector_id, task="emotion", limit=0)
    for r in recorded.items:
        if r.dataset_oid != dataset_oid or (vector_id is None and r.vector_id is not None):
            continue
        if vector_id is None:
            key: tuple[float | None, int | None, bool | None] = (None, None, None)
        else:
            key = (r.alpha, r.layers[0] if r.layers else None, bool(r.settings.get("normalize")))
        found.setdefault(key, []).append(r)
    return found


def evaluate_emotion(
    reg: Registry,
    emotion: str,
    model: str,
    *,
    vector_id: int | None,
    alphas: Sequence[float],
    layer: int | None = None,
    normalize: bool = False,
    holdout: float = 0.5,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[EvaluationRecord]:
    """Six-shot emotion accuracy on held-out scenarios: the bare model, or a vector at each α."""
    from crx.registry.engine import emotion as task
    from crx.registry.engine.steer import steer

    record = reg.get_model(model)
    split = task.split_scenarios(task.load_scenarios(emotion), holdout)
    dataset_oid = reg.store.put(
        canonical_json({"task": "emotion", "emotion": emotion, "scenarios": split.test})
    )
    base_settings = {
        "emotion": emotion,
        "holdout": holdout,
        "split": "sha256-sorted",
        "protocol": "contrans-6shot",
        "n_test": len(split.test),
    }
    results: list[EvaluationRecord] = []
    done = _recorded(reg, record.name, vector_id, dataset_oid)
    if vector_id is None:
        if (None, None, None) in done:
            return done[(None, None, None)]
        metrics = task.accuracy(
            load(reg, record), emotion, split.test, batch_size=batch_size, progress=progress
        )
        return reg.record_evaluation(
            record.name,
            "emotion",
            metrics,
            dataset_oid=dataset_oid,
            n=len(split.test),
            settings=base_settings,
        )
    steer_layer = steering_layer(reg, record, vector_id, layer)
    if all((float(a), steer_layer, normalize) in done for a in alphas):
        return [r for a in alphas for r in done[(float(a), steer_layer, normalize)]]
    # Only now is there something to compute: load the model and measure its norm.
    loaded = load(reg, record)
    array = reg.load_vector(vector_id)
    norm = reference_norm(reg, record.name, steer_layer) if normalize else None
    for alpha in alphas:
        key = (float(alpha), steer_layer, normalize)
        if key in done:
            results += done[key]
            continue
        with steer(
            loaded.layers,
            array,
            layer=steer_layer,
            alpha=alpha,
            normalize=normalize,
            reference_norm=norm,
        ):
            metrics = task.accuracy(
                loaded, emotion, split.test, batch_size=batch_size, progress=progress
            )
        results += reg.record_evaluation(
            record.name,
            "emotion",
            metrics,
            vector_id=vector_id,
            dataset_oid=dataset_oid,
            layers=[steer_layer],
            alpha=alpha,
            n=len(split.test),
            settings={
                **base_settings,
                "normalize": normalize,
                "reference_norm": norm,
                "scope": "all",
            },
        )
    return results


__all__ = ["CrxError", "default_layer", "evaluate_emotion", "extract", "fit", "transplant"]


def generate(
    reg: Registry,
    model: str,
    prompt: str,
    *,
    vector_id: int | None,
    alpha: float,
    layer: int | None = None,
    normalize: bool = False,
    max_new_tokens: int = 40,
) -> dict[str, str]:
    """Greedy continuations of ``prompt``: ``{"base": ..., "steered (...)": ...}``."""
    import torch

    from crx.registry.engine.steer import steer

    record = reg.get_model(model)
    loaded = load(reg, record)
    inputs = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.device)

    def run() -> str:
        with torch.inference_mode():
            out = loaded.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=loaded.tokenizer.pad_token_id,
            )
        return str(
            loaded.tokenizer.decode(
                out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
        )

    texts = {"base": run()}
    if vector_id is not None:
        steer_layer = steering_layer(reg, record, vector_id, layer)
        norm = reference_norm(reg, record.name, steer_layer) if normalize else None
        with steer(
            loaded.layers,
            reg.load_vector(vector_id),
            layer=steer_layer,
            alpha=alpha,
            normalize=normalize,
            reference_norm=norm,
        ):
            texts[f"steered (vector {vector_id}, layer {steer_layer}, alpha {alpha})"] = run()
    return texts


def evaluate_truthfulqa(
    reg: Registry,
    model: str,
    data: str | Path,
    *,
    vector_id: int | None,
    alphas: Sequence[float] = (),
    layer: int | None = None,
    normalize: bool = False,
    primer: bool = False,
    limit: int | None = None,
    progress: Progress | None = None,
) -> list[EvaluationRecord]:
    """TruthfulQA MC1/MC2 of the bare model, or of a steering vector at each α."""
    from crx.registry.engine import truthfulqa
    from crx.registry.engine.steer import steer

    try:
        raw = Path(data).read_bytes()
        questions = truthfulqa.parse_questions(raw.decode("utf-8"), str(data))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read TruthfulQA data {data}: {exc}") from None
    questions = questions[:limit] if limit else questions
    record = reg.get_model(model)
    loaded = load(reg, record)
    dataset_oid = reg.store.put(raw)
    settings = {"primer": primer, "n_questions": len(questions), "scoring": "sum-logprob"}
    if vector_id is None:
        metrics = truthfulqa.evaluate(loaded, questions, primer=primer, progress=progress)
        return reg.record_evaluation(
            record.name,
            "truthfulqa",
            metrics,
            dataset_oid=dataset_oid,
            n=len(questions),
            settings=settings,
        )
    steer_layer = steering_layer(reg, record, vector_id, layer)
    array = reg.load_vector(vector_id)
    norm = reference_norm(reg, record.name, steer_layer) if normalize else None
    results: list[EvaluationRecord] = []
    for alpha in alphas:
        with steer(
            loaded.layers,
            array,
            layer=steer_layer,
            alpha=alpha,
            normalize=normalize,
            reference_norm=norm,
            d_model=record.d_model,
        ):
            metrics = truthfulqa.evaluate(loaded, questions, primer=primer, progress=progress)
        results += reg.record_evaluation(
            record.name,
            "truthfulqa",
            metrics,
            vector_id=vector_id,
            dataset_oid=dataset_oid,
            layers=[steer_layer],
            alpha=alpha,
            n=len(questions),
            settings={**settings, "normalize": normalize, "reference_norm": norm},
        )
    return results
