"""``crx diff``: compare the desired catalogue (spec files) with the registry, object by object.

Pure reading: nothing is stored or computed beyond hashing the files the specs name (pairs,
corpus, TruthfulQA data) the way registration would. Each spec object becomes a `Change`:

* model: create / update (path, gguf_file, revision, family, role, tags; a label left out of
  the spec keeps the registered one) / unchanged;
* concept: create / update (a new version when pairs, template, construction or extraction
  differ from every registered version; a description change alone is an update too) /
  unchanged;
* extraction (a concept on each ``extract_on`` model), map fit, transplant, evaluation:
  create (with the compute it needs) / unchanged when the registry already holds the result
  of exactly that recipe (content addressing), or when everything upstream is unchanged;
* policy (a ``kind: policy`` file): create / update (each field that differs; evidence rules
  compared by position, as ``evidence[I].FIELD``, or ``evidence[I]`` for a rule added or
  dropped) / unchanged;
* a model, concept or policy in the registry and not in the specs: remove, with what would go
  with it; apply deletes it only with ``--prune``.

The diff is a pure function of the spec files and one `Snapshot` of the registry, read in a
single read transaction (so every comparison sees the same registry). The result also carries
what `crx.registry.declare.apply` needs to do the work (`Desired`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crx.registry.declare.snapshot import Snapshot
from crx.registry.errors import InvalidInput
from crx.schemas.declare import Action, Change, FieldChange, ObjectKind
from crx.schemas.governance import PolicyRecord, PolicySpec
from crx.schemas.records import (
    ConceptVersionRecord,
    ModelRecord,
    VectorRecord,
)
from crx.schemas.spec import (
    CatalogSpec,
    ConceptSpec,
    EvaluationSpec,
    MapSpec,
    ModelSpec,
    TransplantSpec,
    policy_key,
)

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog
    from crx.registry.declare.specfile import LoadedSpecs
    from crx.registry.models.facts import ModelFacts
    from crx.registry.pairs import ContrastPair


@dataclass
class DesiredModel:
    spec: ModelSpec
    path: str
    family: str | None
    role: str | None
    tags: dict[str, Any]
    current: ModelRecord | None
    facts: ModelFacts | None = None  # read by the diff for a new or moved local model


@dataclass
class DesiredConcept:
    spec: ConceptSpec
    pairs: list[ContrastPair]
    pairs_bytes: bytes
    extraction: dict[str, Any]
    content_sha256: str
    version: ConceptVersionRecord | None  # the registered version with this content, if any
    latest: ConceptVersionRecord | None


@dataclass
class Desired:
    """The specs resolved against the registry: what apply computes and writes."""

    snapshot: Snapshot
    models: dict[str, DesiredModel] = field(default_factory=dict)
    concepts: dict[str, DesiredConcept] = field(default_factory=dict)
    policies: list[PolicySpec] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    by_key: dict[str, Change] = field(default_factory=dict)

    def add(self, change: Change) -> Change:
        self.changes.append(change)
        self.by_key[change.key] = change
        return change

    def pending(self, key: str) -> bool:
        """Whether apply will (re)make the object ``key`` (so what depends on it is new too)."""
        change = self.by_key.get(key)
        return change is not None and change.action == "create"

    def new_concept_version(self, name: str) -> bool:
        concept = self.concepts.get(name)
        return concept is not None and concept.version is None


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def emotion_dataset_oid(emotion: str) -> str:
    """The oid the emotion protocol stores its held-out scenarios under."""
    from crx.registry.workflows.evaluate import emotion_protocol

    return emotion_protocol(emotion).dataset_oid


# -- models ---------------------------------------------------------------------------------


def _desired_model(spec: ModelSpec, current: ModelRecord | None) -> DesiredModel:
    from crx.registry.models.facts import _looks_local

    if spec.pull is not None:
        from crx.registry.models.catalogue import CATALOGUE, model_dir

        if spec.pull not in CATALOGUE:
            raise InvalidInput(
                f"model {spec.name}: no packaged model {spec.pull!r} "
                f"(see `crx models available`: {', '.join(sorted(CATALOGUE))})"
            )
        packaged = CATALOGUE[spec.pull]
        return DesiredModel(
            spec=spec,
            path=str(model_dir(packaged.name)),
            family=spec.family or packaged.family,
            role=spec.role or packaged.role,
            tags={"source": packaged.source, "gguf_sha256": packaged.sha256, **spec.tags},
            current=current,
        )
    path = spec.path or ""
    if _looks_local(path) and not path.endswith(".gguf"):
        path = str(Path(path).expanduser().resolve())
    return DesiredModel(spec, path, spec.family, spec.role, dict(spec.tags), current)


def _read_local_facts(desired: DesiredModel, where: str | None) -> None:
    """Read a local model's config now (no weights), so the diff refuses what apply would:
    a folder that does not exist, a config it cannot use; and knows the layer count."""
    from crx.registry.models.facts import _looks_local, read_model_facts

    spec = desired.spec
    if spec.pull is not None or not _looks_local(desired.path):
        return  # pulled later by apply, or a hub id (never fetched by a diff)
    current = desired.current
    if current is not None and (current.path, current.gguf_file) == (desired.path, spec.gguf_file):
        return  # registered from this very place: its registered facts stand
    try:
        facts = read_model_facts(desired.path, spec.gguf_file, spec.revision)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: model {spec.name}: {exc}" if where else str(exc)) from None
    desired.facts = facts


def _pinned_by(asked: str | None, registered: str | None) -> bool:
    """Whether a spec's branch or tag (``main``, ``v1.0``) stands for the commit registered.

    A hub id's revision is pinned when it is registered: the label resolves once, to the commit
    recorded. A diff never reaches the hub, so a label is not re-resolved: the registered
    commit stands until the spec names another commit (40 hex digits)."""
    if asked is None or registered is None or _is_commit(asked):
        return False
    return _is_commit(registered)


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision.lower())


def _diff_model(desired: DesiredModel, where: str | None) -> Change:
    spec, current = desired.spec, desired.current
    compute = []
    if spec.pull is not None:
        from crx.registry.models.catalogue import pulled

        if not pulled(spec.pull):
            compute.append(f"pull {spec.pull} (download, check, convert)")
    if current is None:
        return Change(key=spec.key, kind="model", action="create", compute=compute, where=where)
    wanted = {
        "path": desired.path,
        "gguf_file": spec.gguf_file,
        "revision": spec.revision,
        "family": desired.family,
        "role": desired.role,
        "tags": desired.tags or None,
    }
    if _pinned_by(spec.revision, current.revision):
        wanted["revision"] = None
    changes = [
        FieldChange(field=name, old=getattr(current, name), new=value)
        for name, value in wanted.items()
        # A label left out keeps the registered one (as `crx register model` does); a local
        # folder's path is compared as registration stores it.
        if value is not None
        and value != getattr(current, name)
        and not (name == "gguf_file" and spec.pull is not None)
    ]
    action: Action = "update" if changes else "unchanged"
    return Change(
        key=spec.key, kind="model", action=action, changes=changes, compute=compute, where=where
    )


# -- concepts -------------------------------------------------------------------------------


def _desired_concept(spec: ConceptSpec, versions: list[ConceptVersionRecord]) -> DesiredConcept:
    from crx.registry import pairs as pairs_module
    from crx.registry.catalog.concepts import recipe_sha256
    from crx.registry.catalog.service import DEFAULT_EXTRACTION

    parsed = pairs_module.parse_pairs_file(spec.pairs)
    data = pairs_module.canonical_bytes(parsed)
    extraction = {
        **DEFAULT_EXTRACTION,
        "method": spec.extraction.method,
        "token": spec.extraction.token,
    }
    content = recipe_sha256(
        hashlib.sha256(data).hexdigest(), spec.template, spec.pair_construction, extraction
    )
    same = [v for v in versions if v.content_sha256 == content]
    return DesiredConcept(
        spec=spec,
        pairs=parsed,
        pairs_bytes=data,
        extraction=extraction,
        content_sha256=content,
        version=same[-1] if same else None,
        latest=versions[-1] if versions else None,
    )


def _diff_concept(desired: DesiredConcept, where: str | None) -> Change:
    spec, latest = desired.spec, desired.latest
    if latest is None:
        return Change(
            key=spec.key,
            kind="concept",
            action="create",
            where=where,
            note=f"version 1 ({len(desired.pairs)} pairs)",
        )
    description = (
        [FieldChange(field="description", old=latest.description, new=spec.description)]
        if spec.description != latest.description
        else []
    )
    if desired.version is not None and spec.use is not None:
        marked = bool(desired.version.tags.get("use"))
        if marked != spec.use:
            description.append(FieldChange(field="use", old=marked, new=spec.use))
    if desired.version is not None:
        note = (
            ""
            if desired.version.version == latest.version
            else f"matches version {desired.version.version}; the latest is {latest.version}"
        )
        action: Action = "update" if description else "unchanged"
        return Change(
            key=spec.key,
            kind="concept",
            action=action,
            changes=description,
            where=where,
            note=note,
        )
    pairs_oid = hashlib.sha256(desired.pairs_bytes).hexdigest()
    candidates = [
        ("pairs_oid", latest.pairs_oid, pairs_oid),
        ("n_pairs", latest.n_pairs, len(desired.pairs)),
        ("template", latest.template, spec.template),
        ("pair_construction", latest.pair_construction, spec.pair_construction),
        ("extraction", latest.extraction, desired.extraction),
    ]
    changes = [FieldChange(field=f, old=o, new=n) for f, o, n in candidates if o != n]
    if spec.use:
        changes.append(FieldChange(field="use", old=bool(latest.tags.get("use")), new=True))
    return Change(
        key=spec.key,
        kind="concept",
        action="update",
        changes=changes + description,
        where=where,
        note=f"new version {latest.version + 1}",
    )


# -- the diff -------------------------------------------------------------------------------


def diff(catalog: Catalog, loaded: LoadedSpecs) -> Desired:
    """Every object of the specs (and every removal) as a `Change`, plus what apply needs."""
    return diff_snapshot(Snapshot.read(catalog, loaded.catalog), loaded)


def diff_snapshot(snapshot: Snapshot, loaded: LoadedSpecs) -> Desired:
    """`diff` as a pure function of the specs and one snapshot of the registry."""
    catalog: CatalogSpec = loaded.catalog
    where = loaded.locations.get
    out = Desired(snapshot)
    for spec in catalog.models:
        desired = _desired_model(spec, snapshot.models.get(spec.name))
        _read_local_facts(desired, where(spec.key))
        out.models[spec.name] = desired
        out.add(_diff_model(desired, where(spec.key)))
    for cspec in catalog.concepts:
        dc = _desired_concept(cspec, snapshot.versions.get(cspec.name, []))
        out.concepts[cspec.name] = dc
        out.add(_diff_concept(dc, where(cspec.key)))
    known_models = set(snapshot.models) | set(out.models)
    for cspec in catalog.concepts:
        for model in cspec.extract_on:
            _check_model(model, known_models, where(cspec.key))
            out.add(_diff_extraction(out, snapshot, cspec, model, where(cspec.key)))
    for mspec in catalog.maps:
        for model in (mspec.source, mspec.target):
            _check_model(model, known_models, where(mspec.key))
        out.add(_diff_map(out, snapshot, mspec, where(mspec.key)))
    for tspec in catalog.transplants:
        for model in (tspec.source, tspec.target):
            _check_model(model, known_models, where(tspec.key))
        out.add(_diff_transplant(out, snapshot, tspec, where(tspec.key)))
    for espec in catalog.evaluations:
        _check_model(espec.model, known_models, where(espec.key))
        out.add(_diff_evaluation(out, snapshot, espec, where(espec.key)))
    known_concepts = snapshot.concept_names | set(out.concepts)
    declared_policies = {p.name for p in catalog.policies}
    for pspec in catalog.policies:
        out.policies.append(pspec)
        out.add(
            _diff_policy(
                pspec,
                snapshot.policies,
                declared_policies,
                known_concepts,
                known_models,
                where(policy_key(pspec.name)),
            )
        )
    _check_policy_scopes(catalog.policies, where)
    removals: list[tuple[ObjectKind, set[str]]] = [
        ("model", set(snapshot.models) - set(out.models)),
        ("concept", snapshot.concept_names - set(out.concepts)),
    ]
    for kind, gone in removals:
        counts = snapshot.removals[kind]
        for name in sorted(gone):
            out.add(
                Change(
                    key=f"{kind}:{name}", kind=kind, action="remove", note=_removal(counts[name])
                )
            )
    for name in sorted(set(snapshot.policies) - declared_policies):
        scope = _scope(snapshot.policies[name].spec)
        note = f"not in the specs; kept unless --prune; {scope}"
        out.add(Change(key=policy_key(name), kind="policy", action="remove", note=note))
    return out


# -- policies -------------------------------------------------------------------------------


def _scope(spec: PolicySpec) -> str:
    concept = f"concept {spec.concept}" if spec.concept else "every concept"
    model = f"model {spec.model}" if spec.model else "every model"
    return f"governs {spec.alias} for {concept} on {model}"


def _rule_fields(rule: Any) -> dict[str, Any]:
    """A rule as it reads in a spec file: the fields it sets (defaults left out)."""
    return dict(rule.model_dump(mode="json", exclude_defaults=True))


def policy_changes(old: PolicySpec, new: PolicySpec) -> list[FieldChange]:
    """Every field of ``new`` that differs from ``old``; evidence rules by position."""
    changes = [
        FieldChange(field=name, old=getattr(old, name), new=getattr(new, name))
        for name in ("concept", "model", "alias", "description", "approvals")
        if getattr(old, name) != getattr(new, name)
    ]
    for index in range(max(len(old.evidence), len(new.evidence))):
        before = old.evidence[index] if index < len(old.evidence) else None
        after = new.evidence[index] if index < len(new.evidence) else None
        if before is None or after is None:
            changes.append(
                FieldChange(
                    field=f"evidence[{index}]",
                    old=None if before is None else _rule_fields(before),
                    new=None if after is None else _rule_fields(after),
                )
            )
            continue
        changes += [
            FieldChange(
                field=f"evidence[{index}].{name}",
                old=getattr(before, name),
                new=getattr(after, name),
            )
            for name in type(after).model_fields
            if getattr(before, name) != getattr(after, name)
        ]
    return changes


def _diff_policy(
    spec: PolicySpec,
    registered: dict[str, PolicyRecord],
    declared: set[str],
    concepts: set[str],
    models: set[str],
    where: str | None,
) -> Change:
    key = policy_key(spec.name)
    notes = [_scope(spec)]
    # A policy may be declared before what it governs exists; a name nobody has is likely a
    # typo, so it is said (not refused).
    if spec.concept is not None and spec.concept not in concepts:
        notes.append(f"concept {spec.concept!r} is neither in the specs nor registered")
    if spec.model is not None and spec.model not in models:
        notes.append(f"model {spec.model!r} is neither in the specs nor registered")
    current = registered.get(spec.name)
    same_scope = [
        r.spec.name
        for r in sorted(registered.values(), key=lambda r: r.id)
        if r.spec.name not in declared
        and (r.spec.concept, r.spec.model, r.spec.alias) == (spec.concept, spec.model, spec.alias)
        and (current is None or r.id < current.id)
    ]
    if same_scope:
        # The oldest of equally specific policies governs (`policies.governing`).
        notes.append(f"policy {same_scope[0]} has the same scope and governs until pruned")
    if current is None:
        return Change(key=key, kind="policy", action="create", where=where, note="; ".join(notes))
    changes = policy_changes(current.spec, spec)
    return Change(
        key=key,
        kind="policy",
        action="update" if changes else "unchanged",
        changes=changes,
        where=where,
        note="; ".join(notes),
    )


def _check_policy_scopes(specs: list[PolicySpec], where: Any) -> None:
    """Two declared policies for the same promotions: only one could ever govern."""
    seen: dict[tuple[str | None, str | None, str], str] = {}
    for spec in specs:
        scope = (spec.concept, spec.model, spec.alias)
        if scope in seen:
            first = seen[scope]
            raise InvalidInput(
                f"{where(policy_key(spec.name))}: policy {spec.name} has the same scope as "
                f"policy {first} (declared at {where(policy_key(first))}): {_scope(spec)} "
                "twice, and only one would ever apply"
            )
        seen[scope] = spec.name


def _removal(counts: dict[str, int]) -> str:
    with_it = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return "not in the specs; kept unless --prune" + (
        f" (would delete {with_it})" if with_it else ""
    )


def _check_model(name: str, known: set[str], where: str | None) -> None:
    if name not in known:
        raise InvalidInput(
            f"{where}: model {name!r} is neither in the specs nor registered"
            if where
            else f"model {name!r} is neither in the specs nor registered"
        )


def _concept_version(
    out: Desired, snapshot: Snapshot, ref: str, where: str | None
) -> ConceptVersionRecord | None:
    """The registered version a spec's concept reference means; None if apply will make it."""
    from crx.registry.names import parse_versioned

    name, version = parse_versioned(ref)
    registered = snapshot.versions.get(name, [])
    if version is not None:
        found = [v for v in registered if v.version == version]
        if not found:
            raise InvalidInput(f"{where}: concept {ref} is not registered")
        return found[0]
    if name in out.concepts:
        return out.concepts[name].version
    if not registered:
        raise InvalidInput(f"{where}: concept {name!r} is neither in the specs nor registered")
    return registered[-1]


def _extraction_settings(out: Desired, name: str) -> tuple[str, str]:
    from crx.registry.workflows.extract import ESTIMATORS

    concept = out.concepts.get(name)
    if concept is None:
        return ESTIMATORS["mean"], "last"
    return ESTIMATORS[concept.spec.extraction.method], concept.spec.extraction.token


def _source_vector(
    out: Desired, snapshot: Snapshot, version: ConceptVersionRecord | None, name: str, model: str
) -> VectorRecord | None:
    if version is None:
        return None
    estimator, token = _extraction_settings(out, name)
    found = [
        v
        for v in snapshot.vectors_on(version.id, model)
        if v.origin in ("extracted", "imported")
        and v.estimator in (estimator, "imported")
        and v.token_position == token
    ]
    return found[-1] if found else None


def _diff_extraction(
    out: Desired, snapshot: Snapshot, spec: ConceptSpec, model: str, where: str | None
) -> Change:
    key = f"extraction:{spec.name}:{model}"
    version = out.concepts[spec.name].version
    existing = _source_vector(out, snapshot, version, spec.name, model)
    if existing is not None and not out.pending(f"model:{model}"):
        return Change(
            key=key,
            kind="extraction",
            action="unchanged",
            where=where,
            note=f"vector {existing.id}",
        )
    return Change(
        key=key,
        kind="extraction",
        action="create",
        where=where,
        compute=[
            f"extract {spec.name} on {model} ({spec.extraction.method}, "
            f"{spec.extraction.token} token)"
        ],
    )


def map_corpus(spec: MapSpec) -> tuple[list[str], bytes, str]:
    from crx.registry.workflows.corpus import load_corpus

    lines, data = load_corpus(spec.corpus)
    return lines, data, hashlib.sha256(data).hexdigest()


def _diff_map(out: Desired, snapshot: Snapshot, spec: MapSpec, where: str | None) -> Change:
    from crx.registry.workflows.fit import fitted_before, parse_pairs

    compute = [f"fit {spec.source} -> {spec.target} ({spec.solver}, pairs {spec.pairs})"]
    _check_layer_pairs(out, snapshot, spec, where)
    if spec.solver == "anchored":
        new = [m for m in (spec.source, spec.target) if m not in snapshot.models]
        if new:  # a model this apply registers holds no concept yet: nothing can anchor
            raise InvalidInput(
                f"{where}: an anchored map is fitted on concepts already extracted on both "
                f"models; register {' and '.join(new)} and run `crx bank extract` on it first"
            )
    if out.pending(f"model:{spec.source}") or out.pending(f"model:{spec.target}"):
        return Change(key=spec.key, kind="map", action="create", compute=compute, where=where)
    digest = None
    if spec.solver == "anchored":
        found = snapshot.anchor_digests[spec.key]
        if isinstance(found, Exception):  # apply would fail on it after the slow part
            raise InvalidInput(f"{where}: {found}")
        digest = found
    _, _, corpus_oid = map_corpus(spec)
    src, tgt = snapshot.models[spec.source], snapshot.models[spec.target]
    registered = snapshot.maps_between(spec.source, spec.target)
    fitted = fitted_before(
        registered,
        src,
        tgt,
        parse_pairs(spec.pairs),
        spec.solver,
        corpus_oid,
        anchors_sha256=digest,
    )
    if fitted:
        return Change(
            key=spec.key, kind="map", action="unchanged", where=where, note=f"{len(fitted)} maps"
        )
    return Change(key=spec.key, kind="map", action="create", compute=compute, where=where)


def _layer_count(out: Desired, snapshot: Snapshot, model: str) -> int | None:
    desired = out.models.get(model)
    if desired is not None and desired.facts is not None:
        return desired.facts.n_layers
    registered = snapshot.models.get(model)
    return registered.n_layers if registered is not None else None


def _check_layer_pairs(out: Desired, snapshot: Snapshot, spec: MapSpec, where: str | None) -> None:
    """Explicit layer pairs must exist in both models (apply would refuse them after the slow
    part of the fit)."""
    from crx.registry.workflows.fit import parse_pairs

    wanted = parse_pairs(spec.pairs)
    if isinstance(wanted, str):
        return
    for model, index in ((spec.source, 0), (spec.target, 1)):
        n_layers = _layer_count(out, snapshot, model)
        bad = [pair[index] for pair in wanted if n_layers is not None and pair[index] >= n_layers]
        if bad:
            raise InvalidInput(
                f"{where}: layer {bad[0]} is out of range for {model} ({n_layers} layers)"
            )


def _map_keys_into(out: Desired, source: str, target: str) -> list[str]:
    return [
        c.key
        for c in out.changes
        if c.kind == "map" and c.key.startswith(f"map:{source}->{target}:")
    ]


def _diff_transplant(
    out: Desired, snapshot: Snapshot, spec: TransplantSpec, where: str | None
) -> Change:
    from crx.registry.names import parse_versioned
    from crx.registry.workflows.transplant import choose_maps

    name = parse_versioned(spec.concept)[0]
    compute = [f"transplant {spec.concept} {spec.source} -> {spec.target}"]
    create = Change(key=spec.key, kind="transplant", action="create", compute=compute, where=where)
    # What apply would refuse after its slow part, diff refuses now: a layer the target does
    # not have, and no map into the target (none registered at that layer, none declared).
    n_layers = _layer_count(out, snapshot, spec.target)
    if spec.layer is not None and n_layers is not None and not 0 <= spec.layer < n_layers:
        raise InvalidInput(
            f"{where}: layer {spec.layer} is out of range for {spec.target} ({n_layers} layers)"
        )
    declared = _map_keys_into(out, spec.source, spec.target)
    if not declared and not choose_maps(
        snapshot.maps_between(spec.source, spec.target), layer=spec.layer, solver=None
    ):
        at = "" if spec.layer is None else f" at layer {spec.layer}"
        raise InvalidInput(
            f"{where}: no map from {spec.source} to {spec.target}{at}: declare one under maps"
        )
    version = _concept_version(out, snapshot, spec.concept, where)
    upstream = [f"extraction:{name}:{spec.source}", *declared]
    if version is None or any(out.pending(k) for k in upstream):
        return create
    source = _source_vector(out, snapshot, version, name, spec.source)
    if source is None:
        raise InvalidInput(
            f"{where}: no vector of {version.ref} on {spec.source} to transplant: add "
            f"{spec.source} to the concept's extract_on"
        )
    # as apply chooses: never an anchored map that leaks for this concept
    maps = snapshot.usable_maps(version.id, spec.source, spec.target)
    chosen = choose_maps(maps, layer=spec.layer, solver=None)
    wanted = [chosen[lt].id for lt in sorted(chosen)]
    for v in snapshot.vectors_on(version.id, spec.target):
        if v.origin == "mapped" and v.source_vector_id == source.id and v.map_ids == wanted:
            return Change(
                key=spec.key,
                kind="transplant",
                action="unchanged",
                where=where,
                note=f"vector {v.id}",
            )
    return create


def transplanted_vector(
    snapshot: Snapshot, version: ConceptVersionRecord, model: str
) -> VectorRecord | None:
    found = [v for v in snapshot.vectors_on(version.id, model) if v.origin == "mapped"]
    return found[-1] if found else None


def _diff_evaluation(
    out: Desired, snapshot: Snapshot, spec: EvaluationSpec, where: str | None
) -> Change:
    from crx.registry.names import parse_versioned
    from crx.registry.workflows.evaluate import default_layer

    unit = "× residual norm" if spec.normalize else "(absolute)"
    alphas = ", ".join(f"{a:g}" for a in spec.alphas) + f" {unit}"
    what = "the bare model" if spec.concept is None else f"{spec.concept} ({spec.vector})"
    compute = [
        f"evaluate {what} on {spec.model}: {spec.task}"
        + ("" if spec.concept is None else f", α {alphas}")
    ]
    create = Change(key=spec.key, kind="evaluation", action="create", compute=compute, where=where)
    if out.pending(f"model:{spec.model}"):
        return create
    dataset = (
        emotion_dataset_oid(spec.effective_emotion or "")
        if spec.task == "emotion"
        else file_sha256(spec.data or "")
    )
    model = snapshot.models[spec.model]
    if spec.concept is None:
        done = snapshot.evaluations_on(spec.model)
        hit = [
            e
            for e in done
            if e.task == spec.task and e.vector_id is None and e.dataset_oid == dataset
        ]
        return (
            Change(key=spec.key, kind="evaluation", action="unchanged", where=where)
            if hit
            else create
        )
    name = parse_versioned(spec.concept)[0]
    version = _concept_version(out, snapshot, spec.concept, where)
    if version is None:
        return create
    if spec.vector == "native":
        if out.pending(f"extraction:{name}:{spec.model}"):
            return create
        subject = _source_vector(out, snapshot, version, name, spec.model)
    else:
        pending = [
            c.key
            for c in out.changes
            if c.kind == "transplant"
            and c.key.startswith(f"transplant:{spec.concept}:")
            and c.key.endswith(f"->{spec.model}")
            and c.action == "create"
        ]
        if pending:
            return create
        subject = transplanted_vector(snapshot, version, spec.model)
    if subject is None:
        raise InvalidInput(
            f"{where}: no {spec.vector} vector of {version.ref} on {spec.model}: declare its "
            + ("extraction (extract_on)" if spec.vector == "native" else "transplant")
        )
    layer = default_layer(model.n_layers) if spec.layer is None else spec.layer
    done = [e for e in snapshot.evaluations_on(spec.model) if e.vector_id == subject.id]
    have = {
        (e.alpha, tuple(e.layers or ()), bool(e.settings.get("normalize")))
        for e in done
        if e.dataset_oid == dataset and e.task == spec.task
    }
    missing = [a for a in spec.alphas if (float(a), (layer,), spec.normalize) not in have]
    if not missing:
        return Change(
            key=spec.key,
            kind="evaluation",
            action="unchanged",
            where=where,
            note=f"vector {subject.id}",
        )
    return create
