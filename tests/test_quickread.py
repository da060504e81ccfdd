"""The quick read path (`crx.registry.catalog.quickread`) against the catalogue, on real SQLite.

`crx show model` and `crx list vectors` read a SQLite registry with the standard library's
sqlite3, not SQLAlchemy: every record it gives must equal the catalogue's, field for field, and
the commands must print the same bytes either way (``CRX_QUICK_READ=0`` forces the catalogue).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crx.registry.catalog.quickread import MAX_ROW_ID, QuickReader, open_reader
from crx.registry.db.tables import MAX_ROW_ID as TABLES_MAX_ROW_ID
from crx.registry.errors import ModelNotFound
from tests.cli_world import D_MODEL, World, tiny_array


def _fill(w: World) -> None:
    """Beyond `populated_sqlite`: a second concept, a partial vector, a mapped one with maps."""
    with w.registry() as reg:
        reg.register_concept("calm", w.pairs, description="calm vs storm")
        part = reg.save_vector(
            "calm", "tiny", tiny_array(1), origin="imported", layers=[1, 2], settings={"k": [1]}
        ).record
        weight = np.eye(16, D_MODEL, dtype=np.float32)
        second = reg.save_map(
            "tiny", "tiny-b", 2, 0, weight, None, solver="ridge", r2=0.5, metrics={"r2_val": 0.4}
        ).record
        reg.save_vector(
            "calm",
            "tiny-b",
            np.zeros((2, 16), np.float32),
            origin="mapped",
            source_vector_id=part.id,
            map_ids=[w.facts["map_id"], second.id],
            lineage_key="k1",
        )
        reg.register_model("tagged", str(w.model_dir), tags={"team": "a", "n": 2, "ok": True})
    # A JSON null where the catalogue reads an empty object (a row written by another tool).
    with sqlite3.connect(w.db.removeprefix("sqlite:///")) as connection:
        connection.execute("UPDATE vectors SET settings = 'null' WHERE id = ?", (part.id,))


def _reader(w: World) -> QuickReader:
    found = open_reader(w.db)
    assert found is not None
    return found


def test_the_quick_reader_gives_the_catalogues_records(populated_sqlite: World) -> None:
    w = populated_sqlite
    _fill(w)
    quick = _reader(w)
    with w.registry() as reg:
        for model in reg.list_models(limit=None).items:
            assert quick.get_model(model.name) == model
            assert quick.get_model(model.id) == model
            assert quick.get_model(str(model.id)) == model
        for missing in ("nope", "0", "999999", "123456789012", -1, MAX_ROW_ID + 1):
            with pytest.raises(ModelNotFound) as caught:
                quick.get_model(missing)
            with pytest.raises(ModelNotFound) as expected:
                reg.get_model(missing)
            assert str(caught.value) == str(expected.value)
        for filters in ({}, {"concept": "calm"}, {"model": "tiny-b"}, {"concept": "nope"}):
            for limit in (None, 0, 1, 2, 100):
                after = None
                while True:
                    page = quick.list_vectors(**filters, limit=limit, after=after)
                    assert page == reg.list_vectors(**filters, limit=limit, after=after)
                    if page.next_after is None:
                        break
                    after = page.next_after
        everything = reg.list_vectors(limit=None).items
        assert any(v.origin == "mapped" and v.map_ids for v in everything)
        assert quick.list_vectors(after=MAX_ROW_ID * 4) == reg.list_vectors(after=MAX_ROW_ID * 4)
        ids = [i for v in everything for i in v.map_ids or []]
        for wanted in (ids, [*ids, 999, -3, MAX_ROW_ID + 1], []):
            assert quick.get_maps(wanted) == reg.get_maps(wanted)
        assert len(quick.get_maps(ids)) == 2
    quick.close()
    assert MAX_ROW_ID == TABLES_MAX_ROW_ID


def _crx(w: World, *args: str, quick: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRX_QUICK_READ": "1" if quick else "0"}
    command = [sys.executable, "-X", "importtime", "-m", "crx", "--db", w.db]
    return subprocess.run(
        [*command, "--store", str(w.store), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def _imported(result: subprocess.CompletedProcess[str], module: str) -> bool:
    """Whether ``-X importtime`` lists ``module`` (at any depth of the import tree)."""
    return any(
        line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == module
        for line in result.stderr.splitlines()
    )


def test_the_read_commands_print_the_same_without_importing_sqlalchemy(
    populated_sqlite: World,
) -> None:
    w = populated_sqlite
    _fill(w)
    for args in (
        ("show", "model", "tiny"),
        ("show", "model", "tiny-b", "--json"),
        ("list", "vectors"),
        ("list", "vectors", "--limit", "1", "--after", "1", "--json"),
        ("list", "vectors", "--model", "tiny-b"),
    ):
        fast, slow = _crx(w, *args), _crx(w, *args, quick=False)
        assert fast.returncode == slow.returncode == 0, fast.stderr[-500:]
        assert fast.stdout == slow.stdout
        assert fast.stdout.strip()
        assert not _imported(fast, "sqlalchemy"), args
        assert _imported(slow, "sqlalchemy"), args
    missing = _crx(w, "show", "model", "nope")
    assert missing.returncode == 1
    assert [line for line in missing.stderr.splitlines() if line.startswith("Error: ")] == [
        "Error: no model 'nope' in the registry (see `crx list models`)"
    ]


def test_what_it_cannot_answer_goes_to_the_catalogue(
    populated_sqlite: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = populated_sqlite
    assert open_reader("postgresql://crx@localhost/crx") is None
    assert open_reader(f"{w.db}?timeout=5") is None
    assert open_reader(f"sqlite:///{tmp_path / 'absent.db'}") is None
    assert not (tmp_path / "absent.db").exists()  # nothing created by looking
    monkeypatch.setenv("CRX_QUICK_READ", "0")
    assert open_reader(w.db) is None
    monkeypatch.delenv("CRX_QUICK_READ")
    # A database at another schema revision: the catalogue's error, which says what to do.
    old = tmp_path / "old.db"
    shutil.copy(w.db.removeprefix("sqlite:///"), old)
    with sqlite3.connect(old) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0005'")
    assert open_reader(f"sqlite:///{old}") is None
    refused = subprocess.run(
        [sys.executable, "-m", "crx", "--db", f"sqlite:///{old}", "show", "model", "tiny"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "schema revision 0005" in refused.stderr
    assert "crx db upgrade" in refused.stderr
