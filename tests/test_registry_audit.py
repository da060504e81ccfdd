"""The audit trail through the `Registry` facade: every mutating call writes exactly one
event (and a no-op or refused call none), append-only, with its actor and its old and new
values.


Every refusal is checked twice: the right error, and a registry left exactly as it was. Each
test runs on both real databases (a SQLite file, a PostgreSQL server) through the `registry`
fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crx.registry import Registry
from crx.registry.errors import AlreadyExists, InvalidInput
from tests.registry_world import _events, _model_folder, _pairs, _vector

# -- audit ---------------------------------------------------------------------------------


def test_every_mutating_call_writes_exactly_one_audit_event(
    registry: Registry, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # On PostgreSQL the database writes the role it authenticated; CRX_ACTOR is a label.
    actor = "postgres" if registry.db.sql_engine.dialect.name == "postgresql" else "tester"

    def expect(call: Any, *wanted: tuple[str, str]) -> Any:
        before = _events(registry)
        result = call()
        after = _events(registry)
        new = after[len(before) :]
        assert after[: len(before)] == before  # append-only
        assert [(e.action, e.object_kind) for e in new] == list(wanted)
        assert all(e.actor == actor and e.label == "tester" for e in new)
        return result

    wide = _model_folder(tmp_path, "wide", 4, 32)
    expect(lambda: registry.register_model("tiny", str(tiny_model_dir)), ("register", "model"))
    expect(lambda: registry.register_model("tiny", str(tiny_model_dir)))
    expect(
        lambda: registry.register_model("tiny", str(tiny_model_dir), family="llama"),
        ("update", "model"),
    )
    expect(lambda: registry.register_model("wide", str(wide)), ("register", "model"))
    joy = expect(
        lambda: registry.register_concept("joy", _pairs("a"), description="d1"),
        ("register", "concept_version"),
    ).record
    expect(lambda: registry.register_concept("joy", _pairs("a")))
    expect(
        lambda: registry.register_concept("joy", _pairs("a"), description="d2"),
        ("update", "concept"),
    )
    expect(
        lambda: registry.register_concept("joy", _pairs("b"), description="d3"),
        ("register", "concept_version"),
    )
    vector = expect(
        lambda: registry.save_vector(joy.ref, "tiny", _vector(8), origin="extracted"),
        ("register", "vector"),
    ).record
    expect(lambda: registry.save_vector(joy.ref, "tiny", _vector(8), origin="extracted"))
    expect(
        lambda: registry.save_vector(joy.ref, "tiny", _vector(9), origin="extracted", replace=True),
        ("replace", "vector"),
    )
    eye = np.eye(32, dtype=np.float32)
    expect(
        lambda: registry.save_map("tiny", "wide", 0, 0, eye, None, solver="ridge"),
        ("register", "map"),
    )
    expect(lambda: registry.save_map("tiny", "wide", 0, 0, eye, None, solver="ridge"))
    expect(
        lambda: registry.save_map("tiny", "wide", 0, 0, 2 * eye, None, solver="ridge"),
        ("replace", "map"),
    )
    expect(
        lambda: registry.record_evaluation(
            "tiny", "t", {"a": 1.0, "b": 2.0, "c": 3.0}, vector_id=vector.id
        ),
        ("record", "evaluation"),
    )
    # Refused calls write nothing.
    for refused in (
        lambda: registry.register_concept("bad/name", _pairs("x")),
        lambda: registry.save_vector(joy.ref, "tiny", _vector(10), origin="extracted"),
        lambda: registry.save_vector(joy.ref, "tiny", np.ones((2, 2)), origin="extracted"),
    ):
        with pytest.raises((InvalidInput, AlreadyExists)):
            expect(refused)

    events = _events(registry)
    first_version = next(e for e in events if e.object_ref == "joy@1")
    assert first_version.new["description"] == "d1"
    assert first_version.old is None
    second_version = next(e for e in events if e.object_ref == "joy@2")
    assert second_version.old == {"description": "d2"}
    assert second_version.new["description"] == "d3"
    assert registry.list_concepts().items[0].description == "d3"
