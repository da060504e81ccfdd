"""The concept bank: generic contrast concepts shipped with crx, registered and extracted in bulk.

The bank (``registry/data/bank/``: ``index.json`` plus one pairs file per concept, see
``registry/data/NOTICE.md``) holds concepts unrelated to any evaluated task (tense, topics,
register, languages, antonyms ...). Extracted natively on two models, its concepts are the
anchors of the ``anchored`` map solver (`crx.registry.engine.fit.anchored`). Each is registered
as ``bank.NAME`` with the plain template ``{text}``; `extract_bank` registers what is missing and
extracts, with the model loaded once, every bank concept that has no vector on the model yet.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

from crx.registry.errors import InvalidInput
from crx.registry.pairs import ContrastPair, pairs_from_objects
from crx.registry.progress import StagedProgress, staged
from crx.schemas.records import ConceptVersionRecord, VectorRecord

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog
    from crx.registry.workflows.workspace import Workspace
    from crx.schemas.records import ModelRecord

PREFIX = "bank."
TEMPLATE = "{text}"
#: The pair construction every bank concept is registered with: what tells them apart from a
#: team's own concepts (`crx plan` leaves them out unless one is named).
PAIR_CONSTRUCTION = "concept bank"
#: Concepts extracted together: their texts fill whole length-sorted batches (a pass per concept
#: of 24 pairs runs each side as one ragged batch), while the states held stay small (32
#: concepts of 24 pairs on a 1.5B model: ~130 MiB a side).
CONCEPTS_PER_PASS = 32


@dataclass(frozen=True)
class BankConcept:
    """One bank entry: its file name, group and one-line description."""

    name: str
    group: str
    description: str

    @property
    def concept(self) -> str:
        """The registry name it is registered under."""
        return PREFIX + self.name


def _folder() -> Traversable:
    return resources.files("crx.registry").joinpath("data", "bank")


def bank_index() -> list[BankConcept]:
    """Every bank concept, in the index's order."""
    entries = json.loads(_folder().joinpath("index.json").read_text(encoding="utf-8"))
    return [BankConcept(e["name"], e["group"], e["description"]) for e in entries]


def select(names: Sequence[str] | None = None, limit: int | None = None) -> list[BankConcept]:
    """The bank concepts named (``NAME`` or ``bank.NAME``; None: all), then the first ``limit``."""
    index = bank_index()
    if names:
        by_name = {c.name: c for c in index}
        wanted = [n.removeprefix(PREFIX) for n in names]
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise InvalidInput(
                f"not in the concept bank: {', '.join(unknown[:5])} (`crx bank list` names all "
                f"{len(index)})"
            )
        index = [by_name[n] for n in dict.fromkeys(wanted)]
    if limit is not None:
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, not {limit}")
        index = index[:limit]
    return index


def bank_pairs(entry: BankConcept) -> list[ContrastPair]:
    """The contrast pairs of one bank concept."""
    text = _folder().joinpath(f"{entry.name}.json").read_text(encoding="utf-8")
    return pairs_from_objects(f"bank/{entry.name}.json", json.loads(text))


def register_bank(
    ws: Workspace,
    entries: Sequence[BankConcept],
    template: str = TEMPLATE,
    pairs: int | None = None,
) -> list[ConceptVersionRecord]:
    """Register (or find) every entry's concept in ``template``; identical content is a no-op,
    another template is another version of each (``bank.NAME@2``...).

    ``pairs``: only each concept's first N contrast pairs (a version of its own), for a bank
    that extracts in a fraction of the time (``crx demo`` reads 8 of the 24).
    """
    if pairs is not None and pairs < 1:
        raise InvalidInput(f"pairs must be at least 1, not {pairs}")
    catalog = ws.catalog
    out = []
    for entry in entries:
        every = bank_pairs(entry)
        kept = every if pairs is None else every[:pairs]
        subset = "" if len(kept) == len(every) else f" (first {len(kept)} of {len(every)} pairs)"
        out.append(
            catalog.register_concept(
                entry.concept,
                kept,
                description=f"concept bank ({entry.group}): {entry.description}{subset}",
                template=template,
                pair_construction=PAIR_CONSTRUCTION,
            ).record
        )
    return out


def extract_bank(
    ws: Workspace,
    model: str,
    *,
    names: Sequence[str] | None = None,
    limit: int | None = None,
    template: str | None = None,
    pairs: int | None = None,
    batch_size: int = 32,
    concepts_per_pass: int = CONCEPTS_PER_PASS,
    force: bool = False,
    progress: StagedProgress | None = None,
) -> list[tuple[VectorRecord, bool]]:
    """Register the bank's concepts and extract each on ``model``: ``(vector, created)`` each.

    ``template`` (default ``{text}``): the prompt each text is put in, e.g. the template of the
    concepts the anchored maps will transplant, so the anchors are read where those concepts
    are (``crx fit --solver anchored --anchor-template``). ``pairs``: each concept's first N
    pairs only (see `register_bank`). The concepts to extract go through the model
    ``concepts_per_pass`` at a time (`extract_vectors`): each vector is what `crx extract` of
    that concept alone gives, to float tolerance; 1.2-1.5x faster than a concept at a time
    (benchmarks/README.md, "Batching the bank's concepts").

    Reports ``load MODEL`` when it computes anything, then one stage ``bank on MODEL``
    counting concepts.
    """
    from crx.registry.engine.extract import extract_vectors
    from crx.registry.workflows.extract import save_extracted

    entries = select(names, limit)
    catalog = ws.catalog
    record = catalog.get_model(model)
    concepts = register_bank(ws, entries, TEMPLATE if template is None else template, pairs)
    found: dict[int, VectorRecord] = {}
    if not force:
        for k, concept in enumerate(concepts):
            existing = catalog.find_vector(
                concept, record, origin="extracted", estimator="mean_diff", token="last"
            )
            if existing is not None:
                found[k] = existing
    todo = [k for k in range(len(concepts)) if k not in found]
    if todo:
        loaded = ws.load(record, progress=progress)  # reported once, as its own stage
    report = staged(progress, f"bank on {record.name}")
    done = len(found)
    if report is not None:
        report(done, len(concepts))
    created: dict[int, VectorRecord] = {}
    for chunk in _passes(todo, max(1, concepts_per_pass)):
        pair_sets = [catalog.load_pairs(concepts[k]) for k in chunk]
        arrays = extract_vectors(
            loaded,
            pair_sets,
            template=concepts[chunk[0]].template,  # one bank call registers one template
            batch_size=batch_size,
            progress=None
            if report is None
            else _concepts_done(report, done, len(chunk), len(concepts)),
        )
        for k, array, pair_set in zip(chunk, arrays, pair_sets, strict=True):
            created[k] = save_extracted(
                ws,
                concepts[k],
                record,
                array,
                loaded=loaded,
                method="mean",
                token="last",
                batch_size=batch_size,
                n_pairs=len(pair_set),
                replace=force,
            ).record
        done += len(chunk)
        if report is not None:
            report(done, len(concepts))
    return [(found[k], False) if k in found else (created[k], True) for k in range(len(concepts))]


def _passes(todo: Sequence[int], size: int) -> list[list[int]]:
    return [list(todo[i : i + size]) for i in range(0, len(todo), size)]


def _concepts_done(
    report: Callable[[int, int], None], before: int, in_pass: int, total: int
) -> Callable[[int, int], None]:
    """A pass's text progress, reported as concepts done (a pass holds ``in_pass`` of them)."""
    return lambda texts, of: report(before + in_pass * texts // max(of, 1), total)


def is_extracted(
    catalog: Catalog, model: ModelRecord, template: str = TEMPLATE, pairs: int | None = None
) -> bool:
    """Whether every bank concept has a native vector on ``model`` in that template and with
    that many pairs per concept (None: all of them), as `extract_bank` would leave it."""
    per_concept = {}
    for entry in bank_index():
        n = len(bank_pairs(entry))
        per_concept[entry.concept] = n if pairs is None else min(n, pairs)
    found: set[str] = set()
    versions: dict[str, ConceptVersionRecord] = {}
    for v in catalog.list_vectors(model=model.name, limit=None).items:
        if v.concept not in per_concept or v.origin != "extracted":
            continue
        ref = f"{v.concept}@{v.concept_version}"
        version = versions.get(ref) or versions.setdefault(ref, catalog.get_concept(ref))
        if version.template == template and version.n_pairs == per_concept[v.concept]:
            found.add(v.concept)
    return len(found) == len(per_concept)
