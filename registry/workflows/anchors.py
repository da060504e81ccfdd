"""Anchors of the ``anchored`` solver: paired native vectors of concepts on two models, and the
leakage rule that keeps a concept from being transplanted through a map fitted on it.

`anchor_set` gathers every concept extracted natively on both models (mean difference, last
token; the bank's and the team's own; of a concept with several such versions, the newest:
versions of one concept are one direction read twice, and counting both would weigh it double),
minus the concepts excluded and **every concept that
shares a contrast text with one of them** (concepts built from the same scenarios are one
family: the six emotions share theirs). Concepts that share texts with each other are one
*group*, so leave-concepts-out validation never validates on a concept whose texts it trained on.

`leaks` is the rule a transplant checks (`crx transplant`, plans, ``crx apply``): a map leaks for
a concept version when any of its anchors is a version of the same concept or shares a contrast
text with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crx.registry.errors import AnchorLeak, InvalidInput
from crx.registry.hashing import content_sha256
from crx.schemas.records import (
    ConceptVersionRecord,
    MapAnchorRecord,
    MapRecord,
    ModelRecord,
    VectorRecord,
)

if TYPE_CHECKING:
    import numpy as np

    from crx.registry.catalog.service import Catalog
    from crx.registry.pairs import ContrastPair
    from crx.registry.workflows.workspace import Workspace

ESTIMATOR, TOKEN = "mean_diff", "last"


def lineage_digest(lineage: Sequence[tuple[int, int, int]]) -> str:
    """The digest of an anchor set's lineage, in any order."""
    return content_sha256(sorted(lineage))


@dataclass(frozen=True)
class AnchorSet:
    """The anchors of one fit: ``source`` ``[K, Ls, ds]``, ``target`` ``[K, Lt, dt]``."""

    source: np.ndarray
    target: np.ndarray
    groups: list[str]
    refs: list[str]
    lineage: list[tuple[int, int, int]]  # (concept version id, source vector, target vector)

    @property
    def digest(self) -> str:
        """What identifies the set in a map's recipe: the exact versions and vectors."""
        return lineage_digest(self.lineage)

    def settings(self) -> dict[str, object]:
        return {
            "anchors_sha256": self.digest,
            "n_anchor_concepts": len(self.refs),
            "n_anchor_groups": len(set(self.groups)),
        }


def pair_texts(pairs: Iterable[ContrastPair]) -> set[str]:
    """Every text of some contrast pairs, positive and negative alike."""
    return {t for p in pairs for t in (p.positive, p.negative)}


def _texts(catalog: Catalog, concept: ConceptVersionRecord) -> set[str]:
    return pair_texts(catalog.load_pairs(concept))


def _native(catalog: Catalog, model: ModelRecord) -> dict[int, VectorRecord]:
    """The newest native mean-difference vector of each concept version on ``model``."""
    found: dict[int, VectorRecord] = {}
    for v in catalog.list_vectors(model=model.name, limit=None).items:
        native = v.origin == "extracted" and v.estimator == ESTIMATOR and v.layers is None
        if native and v.token_position == TOKEN:
            newest = found.get(v.concept_version_id)
            if newest is None or v.id > newest.id:
                found[v.concept_version_id] = v
    return found


def _families(texts: dict[int, set[str]]) -> dict[int, int]:
    """Union of concept versions that share any text: each version's family representative."""
    parent = {k: k for k in texts}

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    owner: dict[str, int] = {}
    for k, words in texts.items():
        for text in words:
            other = owner.setdefault(text, k)
            if other != k:
                parent[root(k)] = root(other)
    return {k: root(k) for k in texts}


@dataclass(frozen=True)
class _Chosen:
    """The anchors `anchor_set` would load: which vectors, in which groups (no arrays yet)."""

    groups: list[str]
    refs: list[str]
    lineage: list[tuple[int, int, int]]  # (concept version id, source vector, target vector)


def _choose(
    catalog: Catalog,
    source: ModelRecord,
    target: ModelRecord,
    exclude: Iterable[str],
    template: str | None,
) -> _Chosen:
    on_source, on_target = _native(catalog, source), _native(catalog, target)
    both = sorted(set(on_source) & set(on_target))
    excluded = set(exclude)
    versions = {cv: catalog.get_concept(_ref(on_source[cv])) for cv in both}
    if template is not None:
        both = [cv for cv in both if versions[cv].template == template]
    newest: dict[str, int] = {}
    for cv in both:
        held = newest.get(versions[cv].concept)
        if held is None or versions[cv].version > versions[held].version:
            newest[versions[cv].concept] = cv
    both = sorted(newest.values())
    # the excluded concepts' texts, from every version registered (extracted or not)
    banned: set[str] = set()
    for name in excluded:
        for version in catalog.concept_versions(name):
            banned |= _texts(catalog, version)
    texts = {cv: _texts(catalog, versions[cv]) for cv in both}
    family = _families(texts)
    leaky_families = {family[cv] for cv in both if versions[cv].concept in excluded}
    leaky_families |= {family[cv] for cv in both if texts[cv] & banned}
    kept = [cv for cv in both if family[cv] not in leaky_families]
    kept.sort(key=lambda cv: versions[cv].ref)
    if not kept:
        raise InvalidInput(
            f"no concept is extracted on both {source.name} and {target.name} to anchor a map "
            f"(after excluding {', '.join(sorted(excluded)) or 'nothing'}"
            f"{'' if template is None else ', in that template'}): run `crx bank extract "
            f"--model {source.name}` and `crx bank extract --model {target.name}` first"
            f"{'' if template is None else ' (with --template)'}"
        )
    return _Chosen(
        groups=[versions[family[cv]].ref for cv in kept],
        refs=[versions[cv].ref for cv in kept],
        lineage=[(cv, on_source[cv].id, on_target[cv].id) for cv in kept],
    )


def anchor_digest(
    catalog: Catalog,
    source: ModelRecord,
    target: ModelRecord,
    *,
    exclude: Iterable[str] = (),
    template: str | None = None,
) -> str:
    """`AnchorSet.digest` of the set `anchor_set` would gather now, without loading a vector
    (what ``crx diff`` compares a declared anchored map's earlier fits with)."""
    return lineage_digest(_choose(catalog, source, target, exclude, template).lineage)


def anchor_set(
    ws: Workspace,
    source: ModelRecord,
    target: ModelRecord,
    *,
    exclude: Iterable[str] = (),
    template: str | None = None,
) -> AnchorSet:
    """The newest version of every concept natively on both models, minus ``exclude`` (concept
    names) and their families; ``template``: only the versions registered with that template."""
    import numpy as np

    catalog = ws.catalog
    chosen = _choose(catalog, source, target, exclude, template)
    src = np.stack([catalog.load_vector(s) for _, s, _ in chosen.lineage])
    tgt = np.stack([catalog.load_vector(t) for _, _, t in chosen.lineage])
    return AnchorSet(
        source=src.astype(np.float32),
        target=tgt.astype(np.float32),
        groups=chosen.groups,
        refs=chosen.refs,
        lineage=chosen.lineage,
    )


def _ref(vector: VectorRecord) -> str:
    return f"{vector.concept}@{vector.concept_version}"


def leaks(
    catalog: Catalog, concept: ConceptVersionRecord, anchors: Sequence[MapAnchorRecord]
) -> list[str]:
    """The anchors (refs) that make a map unusable for ``concept``: a version of the same
    concept, or a concept sharing a contrast text with it; [] when the map is clean."""
    if not anchors:
        return []
    return leaking_refs(
        catalog, concept.concept, _texts(catalog, concept), [a.ref for a in anchors],
        pairs_oid=concept.pairs_oid,
    )  # fmt: skip


def leaking_refs(
    catalog: Catalog,
    name: str,
    texts: set[str],
    anchor_refs: Sequence[str],
    *,
    pairs_oid: str | None = None,
) -> list[str]:
    """`leaks` for a concept given by its name and contrast texts (one ``crx apply`` is about
    to register, say): the anchor refs that are versions of ``name`` or share a text with it."""
    bad = []
    for ref in anchor_refs:
        other = catalog.get_concept(ref)
        if other.concept == name or other.pairs_oid == pairs_oid or texts & _texts(catalog, other):
            bad.append(ref)
    return bad


def split_leaky(
    catalog: Catalog, concept: ConceptVersionRecord, maps: Sequence[MapRecord]
) -> tuple[list[MapRecord], dict[int, list[str]]]:
    """``maps`` without the anchored ones that leak for ``concept``, and those (id → anchors)."""
    anchored = [m.id for m in maps if m.solver == "anchored"]
    if not anchored:
        return list(maps), {}
    verdicts: dict[tuple[int, ...], list[str]] = {}
    leaky: dict[int, list[str]] = {}
    for map_id, anchors in catalog.map_anchors(anchored).items():
        key = tuple(a.concept_version_id for a in anchors)
        if key not in verdicts:
            verdicts[key] = leaks(catalog, concept, anchors)
        if verdicts[key]:
            leaky[map_id] = verdicts[key]
    return [m for m in maps if m.id not in leaky], leaky


def leak_error(concept: ConceptVersionRecord, leaky: dict[int, list[str]], fix: str) -> AnchorLeak:
    """The error for the leaky maps `split_leaky` found (map id → anchors)."""
    anchors = sorted({a for found in leaky.values() for a in found})
    return AnchorLeak(concept.ref, sorted(leaky), anchors, fix)


def refuse_leaks(
    catalog: Catalog, concept: ConceptVersionRecord, maps: Sequence[MapRecord], fix: str
) -> None:
    """`AnchorLeak` when any of ``maps`` is an anchored map that leaks for ``concept``."""
    _, leaky = split_leaky(catalog, concept, maps)
    if leaky:
        raise leak_error(concept, leaky, fix)


def leak_fix(concept: str, source: str, target: str) -> str:
    """How to get a map that may carry ``concept``."""
    return (
        f"fit maps without it: `crx fit --source {source} --target {target} --solver anchored "
        f"--exclude {concept}`"
    )
