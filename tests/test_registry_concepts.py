"""Concepts through the `Registry` facade: every pairs file format gives the same pairs,
names and versions resolve, and invalid names or pairs files are refused.

Version numbering and idempotent re-registration are in ``test_catalog.py``.


Every refusal is checked twice: the right error, and a registry left exactly as it was. Each
test runs on both real databases (a SQLite file, a PostgreSQL server) through the `registry`
fixture.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from crx.registry import Registry
from crx.registry.errors import (
    AliasNotFound,
    ConceptNotFound,
    InvalidInput,
    InvalidName,
    ModelNotFound,
    PairsFileError,
)
from crx.registry.pairs import ContrastPair
from tests.registry_world import _pairs, _snapshot

TRICKY_PAIRS = [
    ContrastPair("I feel wonderful, truly", 'She said "awful", then left'),
    ContrastPair("Café au lait ☕ — délicieux", "Кофе остыл"),
    ContrastPair("  leading and trailing spaces  ", "tab\tinside"),
    ContrastPair("line one\nline two", "emoji 😞 only"),
]


# -- concepts ------------------------------------------------------------------------------


def _write_all_formats(folder: Path, pairs: list[ContrastPair]) -> list[Path]:
    as_list = folder / "pairs.json"
    as_list.write_text(
        json.dumps([{"positive": p.positive, "negative": p.negative} for p in pairs])
    )
    contrans = folder / "contrans.json"
    contrans.write_text(
        json.dumps({"pos": [p.positive for p in pairs], "neg": [p.negative for p in pairs]})
    )
    jsonl = folder / "pairs.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"positive": p.positive, "negative": p.negative}, ensure_ascii=False)
            for p in pairs
        )
        + "\n\n"
    )
    as_csv = folder / "pairs.csv"
    with as_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["positive", "negative"])
        writer.writerows([p.positive, p.negative] for p in pairs)
    return [as_list, contrans, jsonl, as_csv]


def test_all_pair_formats_give_the_same_pairs_oid(registry: Registry, tmp_path: Path) -> None:
    files = _write_all_formats(tmp_path, TRICKY_PAIRS)
    results = [registry.register_concept("feel", path) for path in files]
    assert [r.created for r in results] == [True, False, False, False]
    assert {r.record.ref for r in results} == {"feel@1"}
    assert len({r.record.pairs_oid for r in results}) == 1
    assert results[0].record.n_pairs == len(TRICKY_PAIRS)
    assert registry.load_pairs("feel") == TRICKY_PAIRS
    assert registry.load_pairs("feel@1") == TRICKY_PAIRS
    # The blob is canonical JSON of exactly those pairs.
    stored = json.loads(registry.store.get(results[0].record.pairs_oid))
    assert stored == {
        "pairs": [{"positive": p.positive, "negative": p.negative} for p in TRICKY_PAIRS]
    }


def test_name_and_version_resolution(registry: Registry) -> None:
    registry.register_concept("joy", _pairs("a"))
    registry.register_concept("joy", _pairs("b"))
    assert registry.get_concept("joy").version == 2
    assert registry.get_concept("joy@1").version == 1
    assert registry.get_concept("joy@2").pairs_oid != registry.get_concept("joy@1").pairs_oid
    assert registry.load_pairs("joy@1") == _pairs("a")
    assert registry.load_pairs("joy") == _pairs("b")
    with pytest.raises(ConceptNotFound, match="joy@3"):
        registry.get_concept("joy@3")
    with pytest.raises(ConceptNotFound, match="sorrow"):
        registry.get_concept("sorrow")
    for bad in ("joy@0", "joy@", "joy@-1", "joy@1.0"):
        with pytest.raises(InvalidInput, match="invalid version"):
            registry.get_concept(bad)
    # A word after @ is an alias name (none set here).
    with pytest.raises(AliasNotFound, match="no alias joy@x"):
        registry.get_concept("joy@x")
    with pytest.raises(ModelNotFound):
        registry.get_model("nope")


BAD_NAMES = [
    "a/b",
    "../etc",
    "a..b",
    "bell\x07",
    "tab\tname",
    "new\nline",
    "a@b",
    "",
    " pad",
    "a\\b",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_names_are_refused_and_change_nothing(
    registry: Registry, tiny_model_dir: Path, pairs_file: Path, name: str
) -> None:
    registry.register_model("tiny", str(tiny_model_dir))
    registry.register_concept("joy", pairs_file)
    before = _snapshot(registry)
    with pytest.raises(InvalidName):
        registry.register_concept(name, pairs_file)
    with pytest.raises(InvalidName):
        registry.register_concept(name, _pairs("fresh"))
    with pytest.raises(InvalidName):
        registry.register_model(name, str(tiny_model_dir))
    assert _snapshot(registry) == before


def test_bad_pairs_files_are_refused_and_change_nothing(registry: Registry, tmp_path: Path) -> None:
    registry.register_concept("joy", _pairs("a"))
    before = _snapshot(registry)
    files = {
        "empty.json": "[]",
        "blank.json": "",
        "no_negative.json": '[{"positive": "x"}]',
        "blank_negative.json": '[{"positive": "x", "negative": "   "}]',
        "broken.json": '[{"positive": "x", "negative": "y"',
        "mismatch.json": '{"pos": ["a", "b"], "neg": ["c"]}',
        "scalar.json": "42",
        "columns.csv": "good,bad\nx,y\n",
        "header_only.csv": "positive,negative\n",
        "bad_line.jsonl": '{"positive": "x", "negative": "y"}\nnot json\n',
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    (tmp_path / "latin1.json").write_bytes(b'[{"positive": "caf\xe9", "negative": "x"}]')
    for path in [*(tmp_path / n for n in files), tmp_path / "latin1.json", tmp_path / "absent"]:
        with pytest.raises(PairsFileError) as caught:
            registry.register_concept("joy", path)
        assert str(path) in str(caught.value)
    with pytest.raises(InvalidInput, match="no contrast pairs"):
        registry.register_concept("joy", [])
    with pytest.raises(InvalidInput, match=r"\{text\}"):
        registry.register_concept("joy", _pairs("b"), template="no placeholder")
    assert _snapshot(registry) == before
