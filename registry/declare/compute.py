"""The compute phase of ``crx apply``: everything the diff says is missing, before any row.

In dependency order (pull models and read their configs, extract, fit, transplant, evaluate),
through the same compute functions as the single commands (`crx.registry.workflows`), with
every blob put in the content-addressed store. Nothing is written to the database here: what
is computed waits in `Work` as pending rows for `crx.registry.declare.write`. Corpus states
are cached under ``$CRX_HOME``, so a re-run after a kill does not redo the slow part of a fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crx.registry.declare.reconcile import Desired, map_corpus, transplanted_vector
from crx.registry.errors import InvalidInput
from crx.registry.names import parse_versioned
from crx.registry.progress import Stage, StagedProgress
from crx.registry.workflows import evaluate as evaluation
from crx.registry.workflows import extract as extraction
from crx.registry.workflows import fit as fitting
from crx.registry.workflows.anchors import split_leaky
from crx.registry.workflows.transplant import choose_maps, map_layers
from crx.schemas.records import ConceptVersionRecord, ModelRecord
from crx.schemas.spec import CatalogSpec, EvaluationSpec

if TYPE_CHECKING:
    from crx.registry.engine.fit import FittedMap
    from crx.registry.engine.loading import LoadedModel
    from crx.registry.workflows.anchors import AnchorSet
    from crx.registry.workflows.workspace import Workspace


@dataclass
class PendingVector:
    concept: str  # concept name (its version is resolved in the write)
    version_ref: str | None  # NAME@V when the spec pinned a registered version
    model: str
    array: np.ndarray
    oid: str
    origin: str
    estimator: str
    token: str
    layers: list[int] | None = None
    source: Any = None  # mapped: the PendingVector or registered vector id it came from
    maps: list[Any] = field(default_factory=list)  # mapped: PendingMap or registered map id
    settings: dict[str, Any] = field(default_factory=dict)
    row_id: int | None = None


@dataclass
class PendingMap:
    source: str
    target: str
    fitted: FittedMap
    oid: str
    solver: str
    pairs_label: str
    corpus_oid: str
    row_id: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # anchored: `anchored_settings`
    anchors: AnchorSet | None = None  # anchored: the concepts it was fitted on


@dataclass
class PendingEvaluation:
    model: str
    task: str
    metrics: dict[str, float]
    subject: Any  # None (bare model), PendingVector or registered vector id
    dataset_oid: str
    layer: int | None
    alpha: float | None
    n: int
    settings: dict[str, Any]


@dataclass
class Work:
    ws: Workspace
    desired: Desired
    stage: Stage
    records: dict[str, ModelRecord] = field(default_factory=dict)  # models as they will be
    facts: dict[str, Any] = field(default_factory=dict)
    concept_blobs: dict[str, str] = field(default_factory=dict)
    extracted: dict[tuple[str, str], PendingVector] = field(default_factory=dict)
    maps: list[PendingMap] = field(default_factory=list)
    mapped: dict[tuple[str, str], PendingVector] = field(default_factory=dict)
    evaluations: list[PendingEvaluation] = field(default_factory=list)

    def model(self, name: str) -> ModelRecord:
        """The model as it will be after apply (registered facts, or the facts just read)."""
        return self.records[name] if name in self.records else self.ws.catalog.get_model(name)

    def load(self, name: str) -> LoadedModel:
        return self.ws.load(self.model(name))


def compute_all(work: Work, specs: CatalogSpec) -> None:
    """Run every compute step apply needs, in dependency order."""
    _compute_models(work)
    _compute_extractions(work)
    _compute_fits(work, specs)
    _compute_transplants(work, specs)
    _compute_evaluations(work, specs)


def _compute_models(work: Work) -> None:
    from crx.registry.models.facts import read_model_facts
    from crx.registry.timeutil import now

    for name, dm in work.desired.models.items():
        change = work.desired.by_key[dm.spec.key]
        if change.action == "unchanged" and not change.compute:
            continue
        if dm.spec.pull is not None:
            from crx.registry.models.pull import get_spec, pull

            work.stage(f"pull {dm.spec.pull}")
            pull(get_spec(dm.spec.pull))
        if change.action == "unchanged":
            continue
        # The diff read a new or moved local model's facts already; read them only otherwise.
        facts = dm.facts or read_model_facts(dm.path, dm.spec.gguf_file, dm.spec.revision)
        work.facts[name] = facts
        stamp = now()
        work.records[name] = ModelRecord(
            id=dm.current.id if dm.current else 0,
            name=name,
            path=facts.path,
            gguf_file=facts.gguf_file,
            # a hub id's branch or tag is recorded as the commit it resolved to (pinned)
            revision=facts.revision or dm.spec.revision,
            architecture=facts.architecture,
            model_type=facts.model_type,
            n_layers=facts.n_layers,
            d_model=facts.d_model,
            vocab_size=facts.vocab_size,
            config_sha256=facts.config_sha256,
            tokenizer_sha256=facts.tokenizer_sha256,
            weights_sha256=facts.weights_sha256,
            family=dm.family,
            role=dm.role,
            tags=dm.tags,
            created_at=stamp,
            updated_at=stamp,
        )


def _pending_vector(
    work: Work, concept: str, ref: str | None, model: str, array: np.ndarray, **kw: Any
) -> PendingVector:
    from crx.registry.store.tensors import encode_vector

    array = np.ascontiguousarray(array, dtype=np.float32)
    oid = work.ws.catalog.store.put(encode_vector(array))
    return PendingVector(concept=concept, version_ref=ref, model=model, array=array, oid=oid, **kw)


def _compute_extractions(work: Work) -> None:
    for name, dc in work.desired.concepts.items():
        if dc.version is None:
            work.concept_blobs[name] = work.ws.catalog.store.put(dc.pairs_bytes)
        for model in dc.spec.extract_on:
            if not work.desired.pending(f"extraction:{name}:{model}"):
                continue
            work.stage(f"extract {name} on {model}")
            ex = dc.spec.extraction
            loaded = work.load(model)
            array = extraction.compute(
                loaded,
                dc.pairs,
                template=dc.spec.template,
                method=ex.method,
                token=ex.token,
                batch_size=ex.batch_size,
            )
            work.extracted[(name, model)] = _pending_vector(
                work,
                name,
                None,
                model,
                array,
                origin="extracted",
                estimator=extraction.ESTIMATORS[ex.method],
                token=ex.token,
                settings=extraction.extraction_settings(
                    method=ex.method,
                    token=ex.token,
                    batch_size=ex.batch_size,
                    n_pairs=len(dc.pairs),
                    template=dc.spec.template,
                    loaded=loaded.label,
                ),
            )


def _compute_fits(work: Work, specs: CatalogSpec) -> None:
    from crx.registry.store.tensors import encode_map

    store = work.ws.catalog.store
    for spec in specs.maps:
        if not work.desired.pending(spec.key):
            continue
        lines, data, corpus_oid = map_corpus(spec)
        store.put(data)
        wanted = fitting.parse_pairs(spec.pairs)
        progress = _announce(work, f"fit {spec.source} -> {spec.target}")
        src, tgt = work.model(spec.source), work.model(spec.target)
        exclude, template = spec.exclude, spec.anchor_template
        anchors = fitting.anchors_for(work.ws, src, tgt, spec.solver, exclude, template)
        fitted = fitting.compute(
            work.ws,
            src,
            tgt,
            lines,
            corpus_oid,
            wanted,
            solver=spec.solver,
            anchors=anchors,
            progress=progress,
        )
        for fm in fitted:
            work.maps.append(
                PendingMap(
                    spec.source,
                    spec.target,
                    fm,
                    store.put(encode_map(fm.weight, fm.bias)),
                    spec.solver,
                    fitting.pairs_label(wanted),
                    corpus_oid,
                    settings=fitting.anchored_settings(anchors, exclude, template),
                    anchors=anchors,
                )
            )


def _announce(work: Work, fit_label: str) -> StagedProgress:
    """A fit progress callback that names each of its stages once on apply's stage line."""
    seen: set[str] = set()

    def progress(name: str, _done: int | None, _total: int | None) -> None:
        if name not in seen:
            seen.add(name)
            work.stage(fit_label if name.startswith("fit ") else name)

    return progress


def _source_array(
    work: Work, concept: str, version: ConceptVersionRecord | None, model: str
) -> tuple[Any, np.ndarray]:
    """(PendingVector or registered vector id, array) of a concept's vector on ``model``."""
    if (concept, model) in work.extracted:
        pending = work.extracted[(concept, model)]
        return pending, pending.array
    ref = version.ref if version is not None else concept
    catalog = work.ws.catalog
    found = catalog.find_vector(ref, model, origin="extracted")
    if found is None:
        raise InvalidInput(f"no vector of {ref} on {model}: add {model} to its extract_on")
    return found.id, catalog.load_vector(found.id)


def _registered_version(work: Work, ref: str) -> ConceptVersionRecord | None:
    name, version = parse_versioned(ref)
    if version is None and name in work.desired.concepts:
        return work.desired.concepts[name].version  # None: apply registers it
    return work.ws.catalog.get_concept(ref)


def _leaks(
    work: Work, name: str, version: ConceptVersionRecord | None, anchor_refs: list[str]
) -> list[str]:
    """The anchors among ``anchor_refs`` that leak for the concept (registered, or the version
    this apply registers, whose texts are the spec's pairs)."""
    from crx.registry.workflows.anchors import leaking_refs, pair_texts

    catalog = work.ws.catalog
    if version is None:
        texts = pair_texts(work.desired.concepts[name].pairs)
        return leaking_refs(catalog, name, texts, anchor_refs)
    texts = pair_texts(catalog.load_pairs(version))
    return leaking_refs(catalog, name, texts, anchor_refs, pairs_oid=version.pairs_oid)


def _compute_transplants(work: Work, specs: CatalogSpec) -> None:
    catalog = work.ws.catalog
    for spec in specs.transplants:
        if not work.desired.pending(spec.key):
            continue
        work.stage(f"transplant {spec.concept} {spec.source} -> {spec.target}")
        name = parse_versioned(spec.concept)[0]
        version = _registered_version(work, spec.concept)
        source, vs = _source_array(work, name, version, spec.source)
        tgt = work.model(spec.target)
        # Per target layer, the best held-out R² among registered maps and maps fitted now.
        candidates: dict[int, tuple[float, Any]] = {}
        registered = catalog.list_maps(source=spec.source, target=spec.target, limit=0).items
        if version is not None:
            # anchored maps fitted on this concept (or its texts) are never candidates for it
            registered = split_leaky(catalog, version, registered)[0]
        for lt, record in choose_maps(registered, layer=spec.layer, solver=None).items():
            candidates[lt] = (record.r2 if record.r2 is not None else float("-inf"), record)
        verdicts: dict[int, list[str]] = {}  # per anchor set (a fit's maps share one)
        skipped: list[str] = []
        for pm in work.maps:
            if (pm.source, pm.target) != (spec.source, spec.target):
                continue
            if pm.anchors is not None:
                key = id(pm.anchors)
                if key not in verdicts:
                    verdicts[key] = _leaks(work, name, version, pm.anchors.refs)
                if verdicts[key]:  # fitted on this concept (or its texts): never carries it
                    skipped += verdicts[key]
                    continue
            if spec.layer is not None and pm.fitted.target_layer != spec.layer:
                continue
            best = candidates.get(pm.fitted.target_layer)
            if best is None or pm.fitted.r2 >= best[0]:
                candidates[pm.fitted.target_layer] = (pm.fitted.r2, pm)
        if not candidates and skipped:
            anchors = ", ".join(sorted(set(skipped)))
            raise InvalidInput(
                f"{spec.concept} cannot go through the anchored maps declared from "
                f"{spec.source} to {spec.target}: they are fitted on {anchors}, which is "
                f"{name} itself or shares its contrast texts (declare one with "
                f"`exclude: [{name}]`)"
            )
        if not candidates:
            raise InvalidInput(
                f"no map from {spec.source} to {spec.target}: declare one under maps"
            )
        weights: dict[int, tuple[np.ndarray, int]] = {}
        used: list[Any] = []
        for lt in sorted(candidates):
            chosen = candidates[lt][1]
            if isinstance(chosen, PendingMap):
                weights[lt] = (chosen.fitted.weight, chosen.fitted.source_layer)
                used.append(chosen)
            else:
                weights[lt] = (catalog.load_map(chosen.id)[0], chosen.source_layer)
                used.append(chosen.id)
        out = map_layers(vs, weights, tgt.n_layers, tgt.d_model)
        source_vector = source if not isinstance(source, PendingVector) else None
        if isinstance(source, PendingVector):
            estimator, token = source.estimator, source.token
        else:
            registered_source = catalog.get_vector(source)
            estimator, token = registered_source.estimator, registered_source.token_position
        pinned = spec.concept if "@" in spec.concept else None
        pending = _pending_vector(
            work,
            name,
            pinned,
            spec.target,
            out,
            origin="mapped",
            estimator=estimator,
            token=token,
            layers=sorted(candidates),
            source=source,
            maps=used,
            settings={"spec": spec.key, "source_vector": source_vector},
        )
        work.mapped[(spec.concept, spec.target)] = pending


def _protocol(work: Work, spec: EvaluationSpec) -> evaluation.Protocol:
    if spec.task == "emotion":
        return evaluation.emotion_protocol(spec.effective_emotion or "")
    protocol = evaluation.truthfulqa_protocol(spec.data or "")
    work.ws.catalog.store.put(protocol.document)
    return protocol


def _compute_evaluations(work: Work, specs: CatalogSpec) -> None:
    for spec in specs.evaluations:
        if not work.desired.pending(spec.key):
            continue
        work.stage(f"evaluate {spec.key.removeprefix('evaluation:')}")
        record = work.model(spec.model)
        loaded = work.load(spec.model)
        protocol = _protocol(work, spec)
        if spec.concept is None:
            work.evaluations.append(
                PendingEvaluation(
                    spec.model,
                    spec.task,
                    protocol.score(loaded, None),
                    None,
                    protocol.dataset_oid,
                    None,
                    None,
                    protocol.n,
                    protocol.settings,
                )
            )
            continue
        subject, array = _subject(work, spec)
        layer = evaluation.default_layer(record.n_layers) if spec.layer is None else spec.layer
        norm = evaluation.reference_norm(loaded, layer) if spec.normalize else None
        scored = evaluation.score_alphas(
            loaded,
            array,
            protocol,
            layer=layer,
            alphas=spec.alphas,
            normalize=spec.normalize,
            norm=norm,
        )
        for alpha, metrics in scored:
            work.evaluations.append(
                PendingEvaluation(
                    spec.model,
                    spec.task,
                    metrics,
                    subject,
                    protocol.dataset_oid,
                    layer,
                    alpha,
                    protocol.n,
                    evaluation.steered_settings(protocol, normalize=spec.normalize, norm=norm),
                )
            )


def _subject(work: Work, spec: EvaluationSpec) -> tuple[Any, np.ndarray]:
    concept = spec.concept or ""
    name = parse_versioned(concept)[0]
    if spec.vector == "native":
        return _source_array(work, name, _registered_version(work, concept), spec.model)
    for (mapped_concept, target), pending in work.mapped.items():
        if target == spec.model and parse_versioned(mapped_concept)[0] == name:
            return pending, pending.array
    version = _registered_version(work, concept)
    found = transplanted_vector(work.desired.snapshot, version, spec.model) if version else None
    if found is None:
        raise InvalidInput(f"no transplanted vector of {concept} on {spec.model}")
    return found.id, work.ws.catalog.load_vector(found.id)
