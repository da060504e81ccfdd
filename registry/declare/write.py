"""The write phase of ``crx apply``: every pending row in one transaction, with its audit.

Models, concept versions (and marks for use), vectors, maps, evaluations, policies and, with
``--prune``, deletions are written by `write_all` inside one `Database.write` transaction, so a
failure or a kill rolls everything back. Blobs are already stored (the compute phase put
them first).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from crx.registry.catalog import concepts, evaluations, maps, models, vectors
from crx.registry.catalog.vectors import layer_norms
from crx.registry.declare.compute import PendingMap, PendingVector, Work
from crx.registry.declare.prune import delete_concept, delete_model
from crx.registry.declare.saved import last_audit_event
from crx.registry.errors import InvalidInput
from crx.registry.governance import policies
from crx.registry.names import parse_versioned
from crx.registry.store.tensors import encode_map, encode_vector
from crx.registry.workflows.fit import fitted_row
from crx.registry.workflows.transplant import lineage_key
from crx.schemas.spec import policy_key


def write_all(session: Session, work: Work, prune: bool, expect_event: int | None) -> int:
    """Write every pending row (and, with ``prune``, the deletions); returns the row count."""
    if expect_event is not None and last_audit_event(work.ws.catalog, session) != expect_event:
        raise InvalidInput("the registry changed while apply computed: run `crx diff -o` again")
    _restore_blobs(work)
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
            pairs_oid=work.concept_blobs.get(name) or work.ws.catalog.store.put(dc.pairs_bytes),
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
                lineage_key="" if pv.origin != "mapped" else lineage_key(source_id, map_ids),
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
            row = fitted_row(pm.fitted, pm.pairs_label)
            row["solver_settings"].update(pm.settings)
            result = maps.add(
                session,
                source_model_id=model_id(pm.source),
                target_model_id=model_id(pm.target),
                oid=pm.oid,
                solver=pm.solver,
                corpus_oid=pm.corpus_oid,
                anchors=[] if pm.anchors is None else pm.anchors.lineage,
                **row,
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
    for spec in work.desired.policies:
        if work.desired.by_key[policy_key(spec.name)].action in ("create", "update"):
            # put writes policy.create / policy.update (old -> new) in this transaction.
            rows += int(policies.put(session, spec)[1])
    if prune:
        for change in work.desired.changes:
            if change.action != "remove":
                continue
            kind, _, name = change.key.partition(":")
            if kind == "policy":
                policies.remove(session, name)
                rows += 1
                continue
            rows += (delete_model if kind == "model" else delete_concept)(session, name)
    return rows


def _restore_blobs(work: Work) -> None:
    """Put back any blob of this apply that a concurrent gc deleted after compute put it (the
    write transaction holds the blob lease, so none can go between this and the commit)."""
    store = work.ws.catalog.store
    for pv in [*work.extracted.values(), *work.mapped.values()]:
        if not store.exists(pv.oid):
            store.put(encode_vector(pv.array))
    for pm in work.maps:
        if not store.exists(pm.oid):
            store.put(encode_map(pm.fitted.weight, pm.fitted.bias))
    for name, dc in work.desired.concepts.items():
        oid = work.concept_blobs.get(name)
        if oid is not None:
            store.ensure_present(oid, dc.pairs_bytes)
