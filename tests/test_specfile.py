"""Spec files: parsing, defaults, path resolution, merging, and located errors (no registry)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crx.registry.declare import LoadedSpecs, load_specs
from crx.registry.errors import InvalidInput, SpecError
from crx.schemas.spec import (
    CatalogSpec,
    ConceptSpec,
    EvaluationSpec,
    ExtractionSpec,
    MapSpec,
    ModelSpec,
    TransplantSpec,
)

FULL = """\
version: 1
models:
  - name: smollm2
    pull: smollm2-135m-instruct
    role: aligned
    family: llama
    tags: {size: 135, chat: true, note: small, ratio: 0.5}
  - name: gemma
    path: /models/gemma
    gguf_file: gemma.gguf
    revision: main
    role: base
concepts:
  - name: happiness
    description: joy vs other emotions
    pairs: pairs/happiness.json
    template: "Say: {text}"
    pair_construction: contrastive
    extraction: {method: pca, token: mean, batch_size: 8}
    extract_on: [smollm2, gemma]
  - name: anger
    pairs: anger.json
maps:
  - source: smollm2
    target: gemma
  - source: smollm2
    target: gemma
    corpus: corpus.txt
    solver: lstsq-svd
    pairs: 22:13, 3:4
transplants:
  - concept: happiness@2
    source: smollm2
    target: gemma
    layer: 3
  - {concept: anger, source: smollm2, target: gemma}
evaluations:
  - concept: happiness
    model: gemma
    alphas: [0.05, 1e-1, 2]
    layer: 4
  - model: gemma
    emotion: happiness
    normalize: false
  - concept: happiness
    model: gemma
    vector: native
    task: truthfulqa
    data: data/tqa.csv
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def full_folder(tmp_path: Path) -> Path:
    """FULL and the files it names."""
    for name in ("pairs/happiness.json", "anger.json", "corpus.txt", "data/tqa.csv"):
        write(tmp_path / name, "x")
    return write(tmp_path / "catalog.yaml", FULL)


def test_full_file_round_trip(tmp_path: Path) -> None:
    spec_file = full_folder(tmp_path)
    loaded = load_specs(spec_file)
    assert isinstance(loaded, LoadedSpecs)
    assert loaded.files == [spec_file]
    cat = loaded.catalog
    base = str(tmp_path.absolute())

    assert cat.models == [
        ModelSpec(
            name="smollm2",
            pull="smollm2-135m-instruct",
            role="aligned",
            family="llama",
            tags={"size": 135, "chat": True, "note": "small", "ratio": 0.5},
        ),
        ModelSpec(
            name="gemma", path="/models/gemma", gguf_file="gemma.gguf", revision="main", role="base"
        ),
    ]
    smollm2 = cat.models[0]
    assert (smollm2.path, smollm2.gguf_file, smollm2.revision) == (None, None, None)
    assert type(smollm2.tags["chat"]) is bool
    assert type(smollm2.tags["size"]) is int

    happiness, anger = cat.concepts
    assert happiness == ConceptSpec(
        name="happiness",
        description="joy vs other emotions",
        pairs=f"{base}/pairs/happiness.json",
        template="Say: {text}",
        pair_construction="contrastive",
        extraction=ExtractionSpec(method="pca", token="mean", batch_size=8),
        extract_on=["smollm2", "gemma"],
    )
    # Defaults.
    assert anger.description == ""
    assert anger.pairs == f"{base}/anger.json"
    assert anger.template == "{text}"
    assert anger.pair_construction == "explicit"
    assert anger.extraction == ExtractionSpec(method="mean", token="last", batch_size=32)
    assert anger.extract_on == []

    assert cat.maps == [
        MapSpec(source="smollm2", target="gemma", corpus=None, solver="ridge", pairs="auto"),
        # "22:13" stays a string (YAML 1.1 would read base-60 1333); spaces are normalised away.
        MapSpec(
            source="smollm2",
            target="gemma",
            corpus=f"{base}/corpus.txt",
            solver="lstsq-svd",
            pairs="22:13,3:4",
        ),
    ]
    assert cat.transplants == [
        TransplantSpec(concept="happiness@2", source="smollm2", target="gemma", layer=3),
        TransplantSpec(concept="anger", source="smollm2", target="gemma", layer=None),
    ]
    steered, bare, tqa = cat.evaluations
    assert steered == EvaluationSpec(
        concept="happiness",
        model="gemma",
        vector="transplanted",
        task="emotion",
        emotion=None,
        data=None,
        alphas=[0.05, 0.1, 2.0],
        normalize=True,
        layer=4,
    )
    assert (bare.concept, bare.emotion, bare.alphas, bare.normalize) == (
        None,
        "happiness",
        [0.1],
        False,
    )
    assert (tqa.task, tqa.vector) == ("truthfulqa", "native")
    assert tqa.data == f"{base}/data/tqa.csv"

    f = str(spec_file)
    assert loaded.locations == {
        "model:smollm2": f"{f}:3",
        "model:gemma": f"{f}:8",
        "concept:happiness": f"{f}:14",
        "concept:anger": f"{f}:21",
        "map:smollm2->gemma:ridge:auto:wikisplit": f"{f}:24",
        f"map:smollm2->gemma:lstsq-svd:22:13,3:4:{base}/corpus.txt": f"{f}:26",
        "transplant:happiness@2:smollm2->gemma": f"{f}:32",
        "transplant:anger:smollm2->gemma": f"{f}:36",
        "evaluation:happiness:gemma:emotion:transplanted": f"{f}:38",
        "evaluation:-:gemma:emotion:base:happiness": f"{f}:42",
        "evaluation:happiness:gemma:truthfulqa:native": f"{f}:45",
    }
    # A dumped catalogue validates again to the same thing (absolute paths stay put).
    assert CatalogSpec.model_validate(cat.model_dump()) == cat


def test_relative_path_resolved_against_the_spec_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "specs/pairs.json", "x")
    write(tmp_path / "specs/c.yaml", "concepts:\n  - {name: c, pairs: pairs.json}\n")
    monkeypatch.chdir(tmp_path)
    loaded = load_specs("specs")
    assert loaded.files == [Path("specs/c.yaml")]
    assert loaded.catalog.concepts[0].pairs == str(tmp_path.absolute() / "specs/pairs.json")
    assert loaded.locations == {"concept:c": "specs/c.yaml:2"}


def test_folder_merged_in_path_order(tmp_path: Path) -> None:
    write(tmp_path / "b/concepts.yml", "concepts:\n  - name: joy\n    pairs: ../joy.json\n")
    write(tmp_path / "joy.json", "x")
    write(tmp_path / "a.yaml", "models:\n  - {name: m1, pull: p1}\n  - {name: m2, pull: p2}\n")
    write(tmp_path / "c.yaml", "version: 1\nmodels:\n  - {name: m3, path: org/m3}\n")
    write(tmp_path / "empty.yaml", "# nothing yet\n")
    write(tmp_path / "notes.txt", "not a spec")
    write(tmp_path / ".hidden/x.yaml", "not: [valid")
    loaded = load_specs(tmp_path)
    assert loaded.files == [
        tmp_path / "a.yaml",
        tmp_path / "b/concepts.yml",
        tmp_path / "c.yaml",
        tmp_path / "empty.yaml",
    ]
    assert [m.name for m in loaded.catalog.models] == ["m1", "m2", "m3"]
    assert loaded.catalog.concepts[0].pairs == str(tmp_path.absolute() / "joy.json")
    assert loaded.locations == {
        "model:m1": f"{tmp_path / 'a.yaml'}:2",
        "model:m2": f"{tmp_path / 'a.yaml'}:3",
        "concept:joy": f"{tmp_path / 'b/concepts.yml'}:2",
        "model:m3": f"{tmp_path / 'c.yaml'}:3",
    }


def test_empty_file_and_empty_sections_are_an_empty_catalogue(tmp_path: Path) -> None:
    assert load_specs(write(tmp_path / "a.yaml", "")).catalog == CatalogSpec()
    loaded = load_specs(write(tmp_path / "b.yaml", "version: 1\nmodels:\nconcepts: []\n"))
    assert loaded.catalog == CatalogSpec()
    assert loaded.locations == {}


# (file content, expected message after "FILE:"); files named in the specs exist unless noted.
BAD = {
    "unknown top-level key": (
        "models: []\nmodles:\n  - {name: m, pull: p}\n",
        r"2: unknown key 'modles' \(did you mean 'models'\?\)",
    ),
    "unknown model key": (
        "models:\n  - name: m\n    pull: p\n    pathh: x\n",
        r"4: models\[0\]: unknown key 'pathh' \(did you mean 'path'\?\)",
    ),
    "unknown nested key": (
        "concepts:\n  - name: c\n    pairs: p.json\n    extraction:\n      method: mean\n"
        "      layer: 3\n",
        r"6: concepts\[0\]\.extraction: unknown key 'layer' \(expected one of method, token, "
        r"batch_size\)",
    ),
    "wrong type": (
        "concepts:\n  - name: c\n    pairs: p.json\n    extraction: {batch_size: '32'}\n",
        r"4: concepts\[0\]\.extraction\.batch_size: must be an integer, not '32'",
    ),
    "number below minimum": (
        "transplants:\n  - {concept: c, source: a, target: b, layer: -1}\n",
        r"2: transplants\[0\]\.layer: must be greater than or equal to 0, not -1",
    ),
    "section not a list": (
        "models:\n  name: m\n",
        r"2: models: must be a list, not \{'name': 'm'\}",
    ),
    "bad enum value": (
        "concepts:\n  - name: a\n    pairs: p.json\n  - name: b\n    pairs: p.json\n"
        "    extraction:\n      method: median\n",
        r"7: concepts\[1\]\.extraction\.method: must be mean or pca, not 'median'$",
    ),
    "bad layer pairs": (
        "maps:\n  - source: a\n    target: b\n    pairs: 1-2\n",
        r"4: maps\[0\]\.pairs: must be auto, all or LS:LT,LS:LT,\.\.\. \(layer numbers\), "
        r"not '1-2'",
    ),
    "both pull and path": (
        "models:\n  - name: m\n    pull: p\n    path: /x\n",
        r"4: models\[0\]\.path: give pull or path, not both",
    ),
    "neither pull nor path": (
        "models:\n  - {name: ok, pull: p}\n  - name: m\n    role: base\n",
        r"3: models\[1\]\.path: give pull \(a packaged model\) or path \(a folder or hub id\)",
    ),
    "gguf_file without path": (
        "models:\n  - name: m\n    pull: p\n    gguf_file: m.gguf\n",
        r"4: models\[0\]\.gguf_file: gguf_file goes with path",
    ),
    "missing required key": (
        "concepts:\n  - name: c\n    description: no pairs\n",
        r"2: concepts\[0\]: missing key 'pairs'",
    ),
    "missing pairs file": (
        "concepts:\n  - name: c\n    pairs: nowhere/p.json\n",
        r"3: concepts\[0\]\.pairs: no such file: nowhere/p\.json \(.*/nowhere/p\.json\)",
    ),
    "missing corpus file": (
        "maps:\n  - {source: a, target: b, corpus: corpus.txt}\n",
        r"2: maps\[0\]\.corpus: no such file: corpus\.txt",
    ),
    "invalid model name": (
        "models:\n  - name: ../evil\n    pull: p\n",
        r"2: models\[0\]\.name: invalid model name '\.\./evil': it contains a path separator",
    ),
    "invalid concept reference": (
        "transplants:\n  - {concept: c@x, source: a, target: b}\n",
        r"2: transplants\[0\]\.concept: invalid version in 'c@x'",
    ),
    "template without text": (
        "concepts:\n  - name: c\n    pairs: p.json\n    template: 'Say it'\n",
        r"4: concepts\[0\]\.template: must contain \{text\}",
    ),
    "version 2": (
        "models: []\nversion: 2\n",
        r"2: version: must be 1, not 2",
    ),
    "truthfulqa without data": (
        "evaluations:\n  - concept: honesty\n    model: m\n    task: truthfulqa\n",
        r"2: evaluations\[0\]\.data: the truthfulqa task needs data",
    ),
    "emotion with data": (
        "evaluations:\n  - concept: joy\n    model: m\n    data: p.json\n",
        r"4: evaluations\[0\]\.data: the emotion task takes no data file",
    ),
    "bare emotion evaluation without emotion": (
        "evaluations:\n  - model: m\n",
        r"2: evaluations\[0\]\.emotion: evaluating the bare model on the emotion task needs",
    ),
    "duplicate within a file": (
        "concepts:\n  - {name: c, pairs: p.json}\n  - {name: c, pairs: p.json}\n",
        r"3: concepts\[1\]: concept:c is already declared at .*spec\.yaml:2$",
    ),
    "key given twice in a mapping": (
        "models:\n  - name: m\n    pull: p\n    name: n\n",
        r"4: models\[0\]: key 'name' is given twice",
    ),
    "YAML syntax error": (
        "models:\n  - name: m\n    pull: [p\n",
        r"4: bad YAML: .*expected ',' or '\]'",
    ),
    "top level not a mapping": (
        "\n- name: m\n",
        r"2: the top level must be a mapping",
    ),
    "two documents": (
        "models: []\n---\nconcepts: []\n",
        r"2: bad YAML: .*expected a single document",
    ),
}


@pytest.mark.parametrize(("text", "expected"), BAD.values(), ids=BAD.keys())
def test_bad_spec_is_located(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path / "p.json", "x")
    spec_file = write(tmp_path / "spec.yaml", text)
    with pytest.raises(SpecError, match="^" + re.escape(f"{spec_file}:") + expected) as info:
        load_specs(spec_file)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, InvalidInput)
    assert info.value.file == str(spec_file)


def test_duplicate_concept_across_files_names_both(tmp_path: Path) -> None:
    write(tmp_path / "p.json", "x")
    a = write(tmp_path / "a.yaml", "concepts:\n  - name: joy\n    pairs: p.json\n")
    b = write(tmp_path / "b.yaml", "models: []\nconcepts:\n  - {name: joy, pairs: p.json}\n")
    expected = f"{b}:3: concepts[0]: concept:joy is already declared at {a}:2"
    with pytest.raises(SpecError, match="^" + re.escape(expected) + "$"):
        load_specs(tmp_path)


def test_python_tag_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    spec_file = write(
        tmp_path / "spec.yaml",
        f"models:\n  - name: m\n    pull: !!python/object/apply:os.mkdir ['{marker}']\n",
    )
    with pytest.raises(
        SpecError,
        match=re.escape(f"{spec_file}:3: bad YAML: could not determine a constructor for the tag")
        + ".*python/object/apply:os.mkdir",
    ):
        load_specs(spec_file)
    assert not marker.exists()


def test_first_error_in_the_file_is_reported(tmp_path: Path) -> None:
    # pydantic lists the concept error first (field order); the model's line comes first.
    spec_file = write(
        tmp_path / "spec.yaml",
        "concepts:\n  - {name: c, pairs: p.json}\nversion: 1\nmodels:\n  - {name: m}\n",
    )
    with pytest.raises(SpecError, match=re.escape(f"{spec_file}:2: concepts[0].pairs: no such")):
        load_specs(spec_file)


def test_missing_file_and_folder_without_specs(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=re.escape(f"{tmp_path / 'no.yaml'}: no such file")):
        load_specs(tmp_path / "no.yaml")
    write(tmp_path / "readme.txt", "x")
    with pytest.raises(SpecError, match=re.escape(f"{tmp_path}: no spec files")):
        load_specs(tmp_path)


def test_keys_of_each_kind() -> None:
    assert ModelSpec(name="m", pull="p").key == "model:m"
    assert MapSpec(source="a", target="b", pairs="1:2").key == "map:a->b:ridge:1:2:wikisplit"
    # The vector kind is irrelevant without a concept; a bare model's emotion is in its key.
    bare = EvaluationSpec(model="g", emotion="joy", vector="native")
    assert bare.key == "evaluation:-:g:emotion:base:joy"
    other = EvaluationSpec(concept="joy@2", model="g", emotion="anger")
    assert other.key == "evaluation:joy@2:g:emotion:transplanted:anger"
    assert (
        EvaluationSpec(concept="joy@2", model="g").key == "evaluation:joy@2:g:emotion:transplanted"
    )


def test_catalog_refuses_repeated_keys() -> None:
    m = ModelSpec(name="m", pull="p")
    with pytest.raises(ValueError, match=r"models\[1\]: model:m is declared twice"):
        CatalogSpec(models=[m, m])


def test_the_readmes_spec_example_is_a_valid_spec(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Declarative catalogues") :]
    example = section[section.index("```yaml\n") + 8 : section.index("```\n", 8)]
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "sadness.json").write_text("[]")
    (tmp_path / "catalog.yaml").write_text(example)
    spec = load_specs(tmp_path).catalog
    assert [(m.solver, m.exclude) for m in spec.maps] == [("ridge", []), ("anchored", ["sadness"])]
    assert len({m.key for m in spec.maps}) == 2
    assert [c.name for c in spec.concepts] == ["sadness"]


def test_anchored_map_options_and_keys() -> None:
    base = {"source": "a", "target": "b"}
    one = MapSpec.model_validate({**base, "solver": "anchored", "exclude": ["y", "x", "y"]})
    assert one.exclude == ["x", "y"]  # a set, in one order: the key does not see how it is written
    other = MapSpec.model_validate({**base, "solver": "anchored", "exclude": ["x"]})
    templated = MapSpec.model_validate(
        {**base, "solver": "anchored", "exclude": ["x"], "anchor_template": "Q: {text}"}
    )
    assert len({one.key, other.key, templated.key}) == 3
    assert MapSpec.model_validate(base).key == "map:a->b:ridge:auto:wikisplit"
    for bad, reason in (
        ({"exclude": ["x"]}, "apply to solver: anchored only"),
        ({"anchor_template": "Q: {text}"}, "apply to solver: anchored only"),
        ({"solver": "anchored", "anchor_template": "no slot"}, "must contain {text}"),
        ({"solver": "anchored", "exclude": ["x@1"]}, "separates a name from its version"),
    ):
        with pytest.raises(ValueError, match=re.escape(reason)):
            MapSpec.model_validate({**base, **bad})
