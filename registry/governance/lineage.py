"""`crx lineage`: where a vector came from, and what has been decided about it, as a graph.

From the vector back to its origins: a mapped vector's source vector and maps (recursively,
so a multi-hop chain is walked to the native vector at its start), a native vector's concept
version (and its contrast pairs) and model, each map's models and corpus. Hanging off the
vector itself: a summary of its evaluations per task and metric (the best value, its α and n
and dataset, and the bare model's value on the same dataset), its approvals and the aliases
that point at it. Deprecations of any object in the graph are nodes too (and a ``deprecated``
detail on the object). Every edge points from an input to what was made from it
(`LineageNode.inputs`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crx.registry.catalog import models
from crx.registry.db.tables import (
    SqlAffineMap,
    SqlAlias,
    SqlApproval,
    SqlConcept,
    SqlConceptVersion,
    SqlDeprecation,
    SqlEvaluation,
    SqlMapAnchor,
    SqlModel,
    SqlVector,
    is_row_id,
)
from crx.registry.errors import InvalidInput, NoVectorOn, VectorNotFound
from crx.registry.governance import subjects
from crx.registry.governance.aliases import is_protected
from crx.registry.hashing import content_sha256
from crx.registry.timeutil import as_utc
from crx.schemas.governance import Lineage, LineageNode
from crx.schemas.plan import alpha_text

Details = dict[str, str | int | float | None]


def _when(value: Any) -> str:
    return f"{as_utc(value):%Y-%m-%d %H:%M:%S} UTC"


def _short(oid: str | None) -> str:
    return oid[:12] if oid else "-"


def _alpha(row: SqlEvaluation) -> str:
    """``α 0.1 × residual norm`` or ``α 4 (absolute)``: which α is meant, always said."""
    if row.alpha is None:
        return "α -"
    return "α " + alpha_text(row.alpha, bool((row.settings or {}).get("normalize")))


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def root_vector(
    session: Session, ref: str | None, model: str | None, vector_id: int | None
) -> SqlVector:
    """The vector ``ref`` names: ``vector:ID``; ``NAME@ALIAS`` (its vector); ``NAME@V`` with
    ``model`` (its one vector there, deprecated or not), or ``vector_id`` among them."""
    if ref is not None and ref.startswith("vector:"):
        text = ref.removeprefix("vector:")
        if not text.isdigit() or len(text) > 10:
            raise InvalidInput(f"vector:ID needs a numeric id, not {text[:40]!r}")
        if vector_id is not None and int(text) != vector_id:
            raise InvalidInput(f"{ref} and --vector {vector_id} name different vectors")
        vector_id, ref = int(text), None
    if ref is None:
        if vector_id is None:
            raise InvalidInput("lineage needs a reference (NAME@V, NAME@ALIAS, vector:ID)")
        row = session.get(SqlVector, vector_id) if is_row_id(vector_id) else None
        if row is None:
            raise VectorNotFound(str(vector_id))
        return row
    concept, version, alias = subjects.concept_version(session, ref, model)
    label = f"{concept.name}@{version.version}"
    if alias is not None and vector_id is None:
        return session.get_one(SqlVector, alias.vector_id)
    query = select(SqlVector).where(SqlVector.concept_version_id == version.id)
    target = models.find(session, model) if model is not None else None
    if target is not None:
        query = query.where(SqlVector.model_id == target.id)
    rows = list(session.scalars(query.order_by(SqlVector.id)))
    if vector_id is not None:
        for row in rows:
            if row.id == vector_id:
                return row
        where = f" on {target.name}" if target is not None else ""
        raise InvalidInput(f"vector {vector_id} is not a vector of {label}{where}")
    if not rows:
        if target is not None:
            raise NoVectorOn(label, target.name)
        raise InvalidInput(f"{label} has no vectors yet")
    if len(rows) > 1:
        names = {m.id: m.name for m in session.scalars(select(SqlModel))}
        listed = ", ".join(f"{r.id} ({r.origin} on {names.get(r.model_id)})" for r in rows)
        hint = "--vector ID" if target is not None else "--model M or --vector ID"
        raise InvalidInput(f"{label} has {len(rows)} vectors ({listed}): pass {hint}")
    return rows[0]


class _Graph:
    """Collects nodes in the order they are first reached (the root first)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.nodes: dict[str, dict[str, Any]] = {}
        self.objects: dict[tuple[str, int], str] = {}  # (deprecation kind, id) → node key
        self._models: dict[int, SqlModel] = {}

    def add(
        self,
        key: str,
        kind: str,
        label: str,
        details: Details,
        inputs: Iterable[str] = (),
    ) -> bool:
        """Add a node; False if it is already there (then nothing is changed)."""
        if key in self.nodes:
            return False
        self.nodes[key] = {
            "key": key,
            "kind": kind,
            "label": label,
            "details": details,
            "inputs": list(inputs),
        }
        return True

    def model(self, model_id: int) -> SqlModel:
        if model_id not in self._models:
            self._models[model_id] = self.session.get_one(SqlModel, model_id)
        return self._models[model_id]

    # -- the way back -------------------------------------------------------------------------

    def vector(self, row: SqlVector) -> str:
        key = f"vector:{row.id}"
        if key in self.nodes:
            return key
        version = self.session.get_one(SqlConceptVersion, row.concept_version_id)
        concept = self.session.get_one(SqlConcept, version.concept_id)
        model = self.model(row.model_id)
        ref = f"{concept.name}@{version.version}"
        details: Details = {
            "concept_version": ref,
            "model": model.name,
            "origin": row.origin,
            "oid": row.oid,
            "hook_point": row.hook_point,
            "token_position": row.token_position,
            "estimator": row.estimator,
            "layers": "all" if row.layers is None else ",".join(map(str, row.layers)),
            "created_at": _when(row.created_at),
        }
        self.add(key, "vector", f"vector {row.id}: {ref} on {model.name} ({row.origin})", details)
        self.objects[("vector", row.id)] = key
        source = (
            self.session.get(SqlVector, row.source_vector_id)
            if row.source_vector_id is not None
            else None
        )
        if source is not None:
            inputs = [self.vector(source)]
            inputs += [self.map(map_id) for map_id in row.map_ids or []]
        else:
            inputs = [self.concept_version(concept, version), self.model_node(row.model_id)]
        self.nodes[key]["inputs"] = inputs
        return key

    def map(self, map_id: int) -> str:
        key = f"map:{map_id}"
        row = self.session.get(SqlAffineMap, map_id) if is_row_id(map_id) else None
        if row is None:
            self.add(key, "map", f"map {map_id} (no longer in the registry)", {})
            return key
        source, target = self.model(row.source_model_id), self.model(row.target_model_id)
        details: Details = {
            "source_model": source.name,
            "target_model": target.name,
            "source_layer": row.source_layer,
            "target_layer": row.target_layer,
            "solver": row.solver,
            "corpus_oid": row.corpus_oid,
            "n_samples": row.n_samples,
            "r2": row.r2,
            "mse": row.mse,
            "cosine": row.cosine,
            "oid": row.oid,
        }
        label = (
            f"map {row.id}: {source.name} L{row.source_layer} -> {target.name} "
            f"L{row.target_layer} ({row.solver}, R² {_num(row.r2)})"
        )
        if not self.add(key, "map", label, details):
            return key
        self.objects[("map", row.id)] = key
        inputs = [self.model_node(row.source_model_id), self.model_node(row.target_model_id)]
        if row.corpus_oid:
            corpus = f"corpus:{row.corpus_oid}"
            self.add(corpus, "corpus", f"corpus {_short(row.corpus_oid)}", {"oid": row.corpus_oid})
            inputs.append(corpus)
        anchors = self.anchors(row.id)
        if anchors is not None:
            inputs.append(anchors)
        self.nodes[key]["inputs"] = inputs
        return key

    def anchors(self, map_id: int) -> str | None:
        """An anchored map's anchor concept versions, one node per distinct set (the maps of
        one fit share it); None for a map without anchors."""
        rows = self.session.execute(
            select(SqlConcept.name, SqlConceptVersion.version, SqlConceptVersion.id)
            .join(SqlConceptVersion, SqlConceptVersion.concept_id == SqlConcept.id)
            .join(SqlMapAnchor, SqlMapAnchor.concept_version_id == SqlConceptVersion.id)
            .where(SqlMapAnchor.map_id == map_id)
            .order_by(SqlConcept.name, SqlConceptVersion.version)
        ).all()
        if not rows:
            return None
        refs = [f"{name}@{version}" for name, version, _ in rows]
        key = "anchors:" + content_sha256(sorted(cv for _, _, cv in rows))[:16]
        shown = ", ".join(refs[:3]) + (f" and {len(refs) - 3} more" if len(refs) > 3 else "")
        self.add(
            key,
            "anchors",
            f"anchors: {len(refs)} concept versions ({shown})",
            {"n_concepts": len(refs), "concepts": ", ".join(refs)},
        )
        return key

    def concept_version(self, concept: SqlConcept, version: SqlConceptVersion) -> str:
        ref = f"{concept.name}@{version.version}"
        key = f"concept:{ref}"
        details: Details = {
            "pairs_oid": version.pairs_oid,
            "n_pairs": version.n_pairs,
            "template": version.template,
            "pair_construction": version.pair_construction,
            "extraction": json.dumps(version.extraction or {}, sort_keys=True),
            "created_at": _when(version.created_at),
        }
        if not self.add(key, "concept_version", f"concept version {ref}", details):
            return key
        self.objects[("concept_version", version.id)] = key
        pairs = f"pairs:{version.pairs_oid}"
        self.add(
            pairs,
            "pairs",
            f"contrast pairs {_short(version.pairs_oid)} ({version.n_pairs} pairs)",
            {"oid": version.pairs_oid, "n_pairs": version.n_pairs},
        )
        self.nodes[key]["inputs"] = [pairs]
        return key

    def model_node(self, model_id: int) -> str:
        row = self.model(model_id)
        key = f"model:{row.name}"
        details: Details = {
            "path": row.path,
            "n_layers": row.n_layers,
            "d_model": row.d_model,
            "role": row.role,
            "family": row.family,
            "weights_sha256": row.weights_sha256,
        }
        label = f"model {row.name} ({row.n_layers} layers x {row.d_model})"
        if self.add(key, "model", label, details):
            self.objects[("model", row.id)] = key
        return key

    # -- hanging off the vector ---------------------------------------------------------------

    def evaluations(self, row: SqlVector, key: str) -> None:
        rows = list(
            self.session.scalars(
                select(SqlEvaluation)
                .where(SqlEvaluation.vector_id == row.id)
                .order_by(SqlEvaluation.id)
            )
        )
        groups: dict[tuple[int, str, str], list[SqlEvaluation]] = {}
        for evaluation in rows:
            groups.setdefault((evaluation.model_id, evaluation.task, evaluation.metric), []).append(
                evaluation
            )
        for (model_id, task, metric), found in groups.items():
            # The first of equal values, α = 0 (the vector not applied) last.
            best = max(found, key=lambda e: (e.value, e.alpha != 0))
            base = self.session.scalar(
                select(SqlEvaluation.value)
                .where(
                    SqlEvaluation.vector_id.is_(None),
                    SqlEvaluation.model_id == model_id,
                    SqlEvaluation.task == task,
                    SqlEvaluation.metric == metric,
                    SqlEvaluation.dataset_oid.is_(None)
                    if best.dataset_oid is None
                    else SqlEvaluation.dataset_oid == best.dataset_oid,
                )
                .order_by(SqlEvaluation.id.desc())
                .limit(1)
            )
            model = self.model(model_id).name
            suffix = "" if model_id == row.model_id else f" on {model}"
            details: Details = {
                "task": task,
                "metric": metric,
                "model": model,
                "best": best.value,
                "alpha": best.alpha,
                "normalize": bool((best.settings or {}).get("normalize")),
                "n": best.n,
                "layers": None if best.layers is None else ",".join(map(str, best.layers)),
                "dataset_oid": best.dataset_oid,
                "base": base,
                "evaluations": len(found),
            }
            label = (
                f"{task}/{metric}{suffix}: best {_num(best.value)} at {_alpha(best)} "
                f"(n {best.n if best.n is not None else '-'}, dataset {_short(best.dataset_oid)}"
                f"), bare model {_num(base)}"
            )
            self.add(f"evaluation:{row.id}:{model}:{task}:{metric}", "evaluation", label,
                     details, [key])  # fmt: skip

    def approvals(self, row: SqlVector, key: str) -> None:
        for approval in self.session.scalars(
            select(SqlApproval).where(SqlApproval.vector_id == row.id).order_by(SqlApproval.id)
        ):
            shown = approval.label and approval.label != approval.actor
            who = approval.actor + (f" ({approval.label})" if shown else "")
            stale = "" if approval.vector_oid == row.oid else " (of an earlier content)"
            details: Details = {
                "decision": approval.decision,
                "alias": approval.alias,
                "actor": approval.actor,
                "label": approval.label,
                "reason": approval.reason,
                "vector_oid": approval.vector_oid,
                "current": "yes" if approval.vector_oid == row.oid else "no",
                "at": _when(approval.at),
            }
            label = (
                f"{approval.decision} for {approval.alias} by {who}, {_when(approval.at)}{stale}"
            )
            self.add(f"approval:{approval.id}", "approval", label, details, [key])

    def aliases(self, row: SqlVector, key: str) -> None:
        for alias in self.session.scalars(
            select(SqlAlias).where(SqlAlias.vector_id == row.id).order_by(SqlAlias.id)
        ):
            concept = self.session.get_one(SqlConcept, alias.concept_id)
            model = self.model(alias.model_id).name
            ref = f"{concept.name}@{alias.name}"
            details: Details = {
                "alias": ref,
                "model": model,
                "revision": alias.revision,
                "action": alias.action,
                "actor": alias.actor,
                "label": alias.label,
                "reason": alias.reason,
                "protected": "yes" if is_protected(self.session, alias.name) else "no",
                "updated_at": _when(alias.updated_at),
            }
            label = (
                f"alias {ref} on {model} (revision {alias.revision}, {alias.action} by "
                f"{alias.actor}, {_when(alias.updated_at)})"
            )
            self.add(f"alias:{ref}:{model}", "alias", label, details, [key])

    def deprecations(self) -> None:
        by_kind: dict[str, list[int]] = {}
        for kind, object_id in self.objects:
            by_kind.setdefault(kind, []).append(object_id)
        for kind, ids in by_kind.items():
            for row in self.session.scalars(
                select(SqlDeprecation)
                .where(SqlDeprecation.object_kind == kind, SqlDeprecation.object_id.in_(ids))
                .order_by(SqlDeprecation.id)
            ):
                target = self.objects[(kind, row.object_id)]
                self.nodes[target]["details"]["deprecated"] = row.reason
                details: Details = {
                    "object": target,
                    "reason": row.reason,
                    "actor": row.actor,
                    "label": row.label,
                    "at": _when(row.at),
                }
                label = f"deprecated by {row.actor}, {_when(row.at)}: {row.reason}"
                self.add(f"deprecation:{row.id}", "deprecation", label, details, [target])


def lineage(
    session: Session,
    ref: str | None,
    *,
    model: str | None = None,
    vector_id: int | None = None,
) -> Lineage:
    """The lineage graph of the vector ``ref`` names (see `root_vector`)."""
    row = root_vector(session, ref, model, vector_id)
    graph = _Graph(session)
    key = graph.vector(row)
    graph.evaluations(row, key)
    graph.approvals(row, key)
    graph.aliases(row, key)
    graph.deprecations()
    return Lineage(
        root=key,
        vector_id=row.id,
        nodes=[LineageNode(**node) for node in graph.nodes.values()],
    )
