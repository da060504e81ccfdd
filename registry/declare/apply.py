"""``crx apply``: make the registry match the specs, computing first and writing once.

Apply runs in two phases:

1. **Compute** what the diff says is missing, in dependency order (pull models, read their
   configs, extract, fit, transplant, evaluate) and put every blob in the content-addressed
   store. Nothing is written to the database yet; states of the calibration corpus are cached
   under ``$CRX_HOME``, so a re-run after a kill does not redo the slow part of a fit.
2. **Write** every row (models, concept versions, vectors, maps, evaluations, and, with
   ``--prune``, deletions) in **one transaction** with its audit events.

A kill during compute leaves the registry as it was (at worst unreferenced blobs, which ``gc``
collects); a kill during the write rolls the transaction back. Re-running finishes the job.
A second apply of unchanged specs finds nothing to do and writes nothing.

A saved diff (``crx diff -o plan.json``) is applied only if the registry's last audit event
and every spec file's sha256 are what they were when it was made.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crx.registry.declare.reconcile import (
    Desired,
    diff,
    emotion_dataset_oid,
    file_sha256,
    map_corpus,
    transplanted_vector,
)
from crx.registry.errors import InvalidInput, first_error
from crx.schemas.declare import ApplyPlan, ApplyReport, Change, SpecFileDigest
from crx.schemas.records import ModelRecord

if TYPE_CHECKING:
    from crx.registry.api import Registry
    from crx.registry.declare.specfile import LoadedSpecs
    from crx.registry.engine.fit import FittedMap

Stage = Callable[[str], None]


# -- saved diffs ----------------------------------------------------------------------------


def make_apply_plan(
    reg: Registry, loaded: LoadedSpecs, changes: list[Change], prune: bool, *, source: str
) -> ApplyPlan:
    return ApplyPlan(
        source=str(Path(source).resolve()),
        created_at=datetime.now(UTC),
        registry=reg._db_url(),
        last_audit_event=last_audit_event(reg),
        spec_files=[
            SpecFileDigest(path=str(f.resolve()), sha256=file_sha256(f)) for f in loaded.files
        ],
        prune=prune,
        changes=changes,
    )


def read_apply_plan(path: str | Path) -> ApplyPlan | None:
    """The saved diff in ``path``, or None when ``path`` is not one (a spec file or folder)."""
    file = Path(path)
    if not file.is_file() or file.suffix != ".json":
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read {file}: {exc}") from None
    if not isinstance(raw, dict) or raw.get("kind") != "crx.apply-plan":
        raise InvalidInput(f"{file} is not a saved diff (made by `crx diff -o FILE.json`)")
    try:
        return ApplyPlan.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"{file} is not a valid saved diff: {first_error(exc)}") from None


def last_audit_event(reg: Registry, session: Session | None = None) -> int:
    from crx.registry.db.tables import SqlAuditEvent

    if session is not None:
        return int(session.scalar(select(func.max(SqlAuditEvent.id))) or 0)
    with reg._read() as read:
        return int(read.scalar(select(func.max(SqlAuditEvent.id))) or 0)


def _check_fresh(reg: Registry, plan: ApplyPlan) -> None:
    now_at = last_audit_event(reg)
    if now_at != plan.last_audit_event:
        raise InvalidInput(
            f"the registry changed since this diff was made (audit event {plan.last_audit_event}"
            f" then, {now_at} now): run `crx diff -o` again"
        )
    for spec_file in plan.spec_files:
        path = Path(spec_file.path)
        if not path.is_file() or file_sha256(path) != spec_file.sha256:
            raise InvalidInput(
                f"spec file {path} changed since this diff was made: run `crx diff -o` again"
            )


# -- the compute phase ----------------------------------------------------------------------


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
    reg: Registry
    desired: Desired
    stage: Stage
    records: dict[str, ModelRecord] = field(default_factory=dict)  # models as they will be
    facts: dict[str, Any] = field(default_factory=dict)
    concept_blobs: dict[str, str] = field(default_factory=dict)
    extracted: dict[tuple[str, str], PendingVector] = field(default_factory=dict)
    maps: list[PendingMap] = field(default_factory=list)
    mapped: dict[tuple[str, str], PendingVector] = field(default_factory=dict)
    evaluations: list[PendingEvaluation] = field(default_factory=list)


def _model_record(work: Work, name: str) -> ModelRecord:
    """The model as it will be after apply (registered facts, or the facts just read)."""
    if name in work.records:
        return work.records[name]
    return work.reg.get_model(name)


def _compute_models(work: Work) -> None:
    from crx.registry.modelinfo import read_model_facts
    from crx.registry.timeutil import now

    for name, dm in work.desired.models.items():
        change = work.desired.by_key[dm.spec.key]
        if change.action == "unchanged" and not change.compute:
            continue
        if dm.spec.pull is not None:
            from crx.registry.engine.pull import get_spec, pull

            work.stage(f"pull {dm.spec.pull}")
            pull(get_spec(dm.spec.pull))
        if change.action == "unchanged":
            continue
        facts = read_model_facts(dm.path, dm.spec.gguf_file, dm.spec.revision)
        work.facts[name] = facts
        stamp = now()
        work.records[name] = ModelRecord(
            id=dm.current.id if dm.current else 0,
            name=name,
            path=facts.path,
            gguf_file=facts.gguf_file,
            revision=dm.spec.revision,
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


def _load(work: Work, name: str) -> Any:
    from crx.registry import contrans

    return contrans.load(work.reg, _model_record(work, name))


def _compute_extractions(work: Work) -> None:
    from crx.registry.contrans import ESTIMATORS
    from crx.registry.engine.extract import extract_vector

    for name, dc in work.desired.concepts.items():
        if dc.version is None:
            work.concept_blobs[name] = work.reg.store.put(dc.pairs_bytes)
        for model in dc.spec.extract_on:
            if not work.desired.pending(f"extraction:{name}:{model}"):
                continue
            work.stage(f"extract {name} on {model}")
            ex = dc.spec.extraction
            array = extract_vector(
                _load(work, model),
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
                estimator=ESTIMATORS[ex.method],
                token=ex.token,
                settings={
                    "method": ex.method,
                    "token": ex.token,
                    "batch_size": ex.batch_size,
                    "n_pairs": len(dc.pairs),
                    "template": dc.spec.template,
                },
            )


def _pending_vector(
    work: Work, concept: str, ref: str | None, model: str, array: np.ndarray, **kw: Any
) -> PendingVector:
    from crx.registry.vector_io import encode_vector

    array = np.ascontiguousarray(array, dtype=np.float32)
    oid = work.reg.store.put(encode_vector(array))
    return PendingVector(concept=concept, version_ref=ref, model=model, array=array, oid=oid, **kw)


def _compute_fits(work: Work, catalog: Any) -> None:
    from crx.registry import contrans
    from crx.registry.engine.fit import fit_pairs
    from crx.registry.store import tensors

    for spec in catalog.maps:
        if not work.desired.pending(spec.key):
            continue
        lines, data, corpus_oid = map_corpus(spec)
        work.reg.store.put(data)
        src, tgt = _model_record(work, spec.source), _model_record(work, spec.target)
        work.stage(f"states {spec.source}")
        x = contrans.corpus_states(work.reg, src, lines, corpus_oid)
        work.stage(f"states {spec.target}")
        y = contrans.corpus_states(work.reg, tgt, lines, corpus_oid)
        work.stage(f"fit {spec.source} -> {spec.target}")
        for fm in fit_pairs(x, y, contrans.parse_pairs(spec.pairs), solver=spec.solver):
            named = {"W": np.ascontiguousarray(fm.weight, dtype=np.float32)}
            if fm.bias is not None:
                named["b"] = np.ascontiguousarray(fm.bias, dtype=np.float32)
            label = spec.pairs if spec.pairs in ("auto", "all") else "explicit"
            work.maps.append(
                PendingMap(
                    spec.source,
                    spec.target,
                    fm,
                    work.reg.store.put(tensors.encode(named)),
                    spec.solver,
                    label,
                    corpus_oid,
                )
            )


def _source_array(work: Work, concept: str, version: Any, model: str) -> tuple[Any, np.ndarray]:
    """(PendingVector or registered vector id, array) of a concept's vector on ``model``."""
    from crx.registry.contrans import find_vector

    if (concept, model) in work.extracted:
        pending = work.extracted[(concept, model)]
        return pending, pending.array
    ref = version.ref if version is not None else concept
    found = find_vector(work.reg, ref, model, origin="extracted")
    if found is None:
        raise InvalidInput(f"no vector of {ref} on {model}: add {model} to its extract_on")
    return found.id, work.reg.load_vector(found.id)


def _registered_version(work: Work, ref: str) -> Any:
    from crx.registry.names import parse_versioned

    name, version = parse_versioned(ref)
    if version is None and name in work.desired.concepts:
        return work.desired.concepts[name].version  # None: apply registers it
    return work.reg.get_concept(ref)


def _compute_transplants(work: Work, catalog: Any) -> None:
    from crx.registry.contrans import choose_maps
    from crx.registry.engine.fit import map_vector
    from crx.registry.names import parse_versioned

    for spec in catalog.transplants:
        if not work.desired.pending(spec.key):
            continue
        work.stage(f"transplant {spec.concept} {spec.source} -> {spec.target}")
        name = parse_versioned(spec.concept)[0]
        version = _registered_version(work, spec.concept)
        source, vs = _source_array(work, name, version, spec.source)
        tgt = _model_record(work, spec.target)
        # Per target layer, the best held-out R² among registered maps and maps fitted now.
        candidates: dict[int, tuple[float, Any]] = {}
        registered = work.reg.list_maps(source=spec.source, target=spec.target, limit=0).items
        for lt, record in choose_maps(registered, layer=spec.layer, solver=None).items():
            candidates[lt] = (record.r2 if record.r2 is not None else float("-inf"), record)
        for pm in work.maps:
            if (pm.source, pm.target) != (spec.source, spec.target):
                continue
            if spec.layer is not None and pm.fitted.target_layer != spec.layer:
                continue
            best = candidates.get(pm.fitted.target_layer)
            if best is None or pm.fitted.r2 >= best[0]:
                candidates[pm.fitted.target_layer] = (pm.fitted.r2, pm)
        if not candidates:
            raise InvalidInput(
                f"no map from {spec.source} to {spec.target}: declare one under maps"
            )
        out = np.zeros((tgt.n_layers, tgt.d_model), dtype=np.float32)
        used: list[Any] = []
        for lt in sorted(candidates):
            chosen = candidates[lt][1]
            if isinstance(chosen, PendingMap):
                weight, ls = chosen.fitted.weight, chosen.fitted.source_layer
            else:
                weight, ls = work.reg.load_map(chosen.id)[0], chosen.source_layer
                chosen = chosen.id
            out[lt] = map_vector(weight, vs[ls])
            used.append(chosen)
        source_vector = source if not isinstance(source, PendingVector) else None
        if isinstance(source, PendingVector):
            estimator, token = source.estimator, source.token
        else:
            registered_source = work.reg.get_vector(source)
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


def _compute_evaluations(work: Work, catalog: Any) -> None:
    from crx.registry import contrans
    from crx.registry.engine import emotion as emotion_task
    from crx.registry.engine import truthfulqa
    from crx.registry.engine.steer import residual_norm, steer

    for spec in catalog.evaluations:
        if not work.desired.pending(spec.key):
            continue
        work.stage(f"evaluate {spec.key.removeprefix('evaluation:')}")
        record = _model_record(work, spec.model)
        loaded = _load(work, spec.model)
        if spec.task == "emotion":
            emotion = spec.effective_emotion or ""
            scenarios = emotion_task.split_scenarios(emotion_task.load_scenarios(emotion)).test
            dataset = emotion_dataset_oid(emotion)

            measure: Callable[[], dict[str, float]] = functools.partial(
                emotion_task.accuracy, loaded, emotion, scenarios
            )

            n = len(scenarios)
            settings: dict[str, Any] = {
                "emotion": emotion,
                "holdout": 0.5,
                "split": "sha256-sorted",
                "protocol": "contrans-6shot",
                "n_test": n,
            }
        else:
            raw = Path(spec.data or "").read_bytes()
            questions = truthfulqa.parse_questions(raw.decode("utf-8"), str(spec.data))
            dataset = work.reg.store.put(raw)

            measure = functools.partial(truthfulqa.evaluate, loaded, questions)

            n = len(questions)
            settings = {"primer": False, "n_questions": n, "scoring": "sum-logprob"}
        if spec.concept is None:
            work.evaluations.append(
                PendingEvaluation(
                    spec.model, spec.task, measure(), None, dataset, None, None, n, settings
                )
            )
            continue
        subject, array = _subject(work, spec)
        layer = contrans.default_layer(record.n_layers) if spec.layer is None else spec.layer
        norm = None
        if spec.normalize:
            lines, _ = contrans.load_corpus(None)
            norm = residual_norm(loaded, lines[:64], layer)
        for alpha in spec.alphas:
            with steer(
                loaded.layers,
                array,
                layer=layer,
                alpha=alpha,
                normalize=spec.normalize,
                reference_norm=norm,
                d_model=record.d_model,
            ):
                metrics = measure()
            work.evaluations.append(
                PendingEvaluation(
                    spec.model,
                    spec.task,
                    metrics,
                    subject,
                    dataset,
                    layer,
                    float(alpha),
                    n,
                    {
                        **settings,
                        "normalize": spec.normalize,
                        "reference_norm": norm,
                        "scope": "all",
                    },
                )
            )


def _subject(work: Work, spec: Any) -> tuple[Any, np.ndarray]:
    from crx.registry.names import parse_versioned

    name = parse_versioned(spec.concept)[0]
    if spec.vector == "native":
        return _source_array(work, name, _registered_version(work, spec.concept), spec.model)
    for (concept, target), pending in work.mapped.items():
        if target == spec.model and parse_versioned(concept)[0] == name:
            return pending, pending.array
    from crx.registry.declare.reconcile import Snapshot

    version = _registered_version(work, spec.concept)
    found = (
        transplanted_vector(Snapshot(work.reg, {name}), version, spec.model) if version else None
    )
    if found is None:
        raise InvalidInput(f"no transplanted vector of {spec.concept} on {spec.model}")
    return found.id, work.reg.load_vector(found.id)


# -- the write phase ------------------------------------------------------------------------


def _write(session: Session, work: Work, prune: bool, expect_event: int | None) -> int:
    from crx.registry.catalog import concepts, evaluations, maps, models, vectors
    from crx.registry.contrans import fit_metrics
    from crx.registry.declare.prune import delete_concept, delete_model
    from crx.registry.vector_io import layer_norms

    if expect_event is not None and last_audit_event(work.reg, session) != expect_event:
        raise InvalidInput("the registry changed while apply computed: run `crx diff -o` again")
    # The facade retries this whole function on a uniqueness race: forget ids of a rolled-back try.
    for pending_vector in [*work.extracted.values(), *work.mapped.values()]:
        pending_vector.row_id = None
    for pending_map in work.maps:
        pending_map.row_id = None
    rows = 0
    for name, facts in work.facts.items():
        dm = work.desired.models[name]
        models.register(
            session,
            name,
            facts,
            revision=dm.spec.revision,
            family=dm.family,
            role=dm.role,
            tags=dm.tags,
        )
        rows += 1
    version_ids: dict[str, int] = {}
    for name, dc in work.desired.concepts.items():
        change = work.desired.by_key[dc.spec.key]
        if change.action == "unchanged" and dc.version is not None:
            version_ids[name] = dc.version.id
            continue
        result = concepts.register_version(
            session,
            name,
            description=dc.spec.description,
            pairs_oid=work.concept_blobs.get(name) or work.reg.store.put(dc.pairs_bytes),
            n_pairs=len(dc.pairs),
            template=dc.spec.template,
            pair_construction=dc.spec.pair_construction,
            extraction=dc.extraction,
        )
        version_ids[name] = result.record.id
        rows += 1
        if dc.spec.use is not None:
            version = result.record.version
            rows += int(concepts.mark_for_use(session, name, version, dc.spec.use).created)

    def version_id(pv: PendingVector) -> int:
        if pv.version_ref is not None:
            from crx.registry.names import parse_versioned

            found = concepts.find_version(session, *parse_versioned(pv.version_ref))
            return int(found[1].id)
        if pv.concept in version_ids:
            return version_ids[pv.concept]
        return int(concepts.find_version(session, pv.concept, None)[1].id)

    def model_id(name: str) -> int:
        return int(models.find(session, name).id)

    def add_vector(pv: PendingVector) -> int:
        if pv.row_id is None:
            source_id: int | None
            source = pv.source
            source_id = add_vector(source) if isinstance(source, PendingVector) else source
            map_ids = [add_map(m) if isinstance(m, PendingMap) else m for m in pv.maps]
            result = vectors.add(
                session,
                concept_version_id=version_id(pv),
                model_id=model_id(pv.model),
                hook_point="resid_post",
                token_position=pv.token,
                estimator=pv.estimator,
                oid=pv.oid,
                n_layers=pv.array.shape[0],
                d_model=pv.array.shape[1],
                dtype="float32",
                layers=pv.layers,
                layer_norms=layer_norms(pv.array),
                origin=pv.origin,
                lineage_key=""
                if pv.origin != "mapped"
                else f"v{source_id}:m" + ",".join(map(str, map_ids)),
                source_vector_id=source_id,
                map_ids=map_ids or None,
                settings={**pv.settings, "source_vector": source_id}
                if pv.origin == "mapped"
                else pv.settings,
                replace=True,
            )
            pv.row_id = result.record.id
        return pv.row_id

    def add_map(pm: PendingMap) -> int:
        if pm.row_id is None:
            fm = pm.fitted
            result = maps.add(
                session,
                source_model_id=model_id(pm.source),
                target_model_id=model_id(pm.target),
                source_layer=fm.source_layer,
                target_layer=fm.target_layer,
                oid=pm.oid,
                solver=pm.solver,
                solver_settings={**fm.settings, "pairs": pm.pairs_label},
                corpus_oid=pm.corpus_oid,
                **fit_metrics(fm),
            )
            pm.row_id = result.record.id
        return pm.row_id

    for pv in work.extracted.values():
        add_vector(pv)
    for pm in work.maps:
        add_map(pm)
    for pv in work.mapped.values():
        add_vector(pv)
    rows += len(work.extracted) + len(work.maps) + len(work.mapped)
    for pe in work.evaluations:
        subject = add_vector(pe.subject) if isinstance(pe.subject, PendingVector) else pe.subject
        evaluations.add(
            session,
            model=models.find(session, pe.model),
            task=pe.task,
            metrics=pe.metrics,
            vector_id=subject,
            dataset_oid=pe.dataset_oid,
            layers=None if pe.layer is None else [pe.layer],
            alpha=pe.alpha,
            n=pe.n,
            settings=pe.settings,
        )
        rows += len(pe.metrics)
    if prune:
        for change in work.desired.changes:
            if change.action != "remove":
                continue
            kind, _, name = change.key.partition(":")
            rows += (delete_model if kind == "model" else delete_concept)(session, name)
    return rows


def apply(
    reg: Registry,
    loaded: LoadedSpecs,
    *,
    prune: bool = False,
    expect: ApplyPlan | None = None,
    stage: Stage | None = None,
) -> ApplyReport:
    """Compute what the specs need, then write every row in one transaction."""
    if expect is not None:
        _check_fresh(reg, expect)
        prune = expect.prune
    desired = diff(reg, loaded)
    changes = desired.changes
    if expect is not None and {str(f.resolve()) for f in loaded.files} != {
        f.path for f in expect.spec_files
    }:
        raise InvalidInput("the spec files are not the ones diffed: run `crx diff -o` again")
    if expect is not None and [(c.key, c.action) for c in changes] != [
        (c.key, c.action) for c in expect.changes
    ]:
        raise InvalidInput("the diff is no longer what was saved: run `crx diff -o` again")
    todo = [
        c
        for c in changes
        if c.action in ("create", "update") or c.compute or (prune and c.action == "remove")
    ]
    if not todo:
        return ApplyReport(changes=changes, applied=False, last_audit_event=last_audit_event(reg))
    work = Work(reg, desired, stage or (lambda _: None))
    _compute_models(work)
    _compute_extractions(work)
    _compute_fits(work, loaded.catalog)
    _compute_transplants(work, loaded.catalog)
    _compute_evaluations(work, loaded.catalog)
    expected = expect.last_audit_event if expect is not None else None
    rows = reg._write(lambda s: _write(s, work, prune, expected))
    return ApplyReport(
        changes=changes, applied=True, rows_written=rows, last_audit_event=last_audit_event(reg)
    )
