"""A registry for the ``crx`` command-line tests to run against, as fixtures and helpers.

Most runs go through click's `CliRunner` in this process (``--db`` / ``--store`` passed
explicitly); `World` holds one registry (a real database and a real local store) and the inputs
the tests feed it. ``tests/conftest.py`` registers this module as a plugin, so its fixtures
(``world``, ``populated``, ``sqlite_world``, ``populated_sqlite``) serve every test; the CLI test
modules import `World` and the plain helpers from here. The contract under test is the
README's "Command reference" and "JSON output".
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from safetensors.numpy import save_file

from crx.cli.main import cli
from crx.registry import Registry
from tests.servers import free_port

N_LAYERS, D_MODEL = 4, 32  # the tiny_model_dir fixture's shape


# -- running the CLI ------------------------------------------------------------------------


@dataclass
class World:
    """One registry (a database and a local store) and the inputs the tests feed it."""

    db: str
    store: Path
    tmp: Path
    model_dir: Path
    pairs: Path
    facts: dict = field(default_factory=dict)
    _files: int = 0

    def run(self, *args: str, db: str | None = None, store: str | None = None) -> Result:
        argv = ["--db", db or self.db, "--store", store or str(self.store), *args]
        return CliRunner().invoke(cli, argv)

    def ok(self, *args: str) -> Result:
        return ok(self.run(*args))

    def json(self, *args: str) -> dict:
        return json.loads(self.ok(*args, "--json").stdout)

    def registry(self) -> Registry:
        return Registry(self.db, str(self.store))

    def file(self, name: str, content: bytes | str) -> Path:
        self._files += 1
        folder = self.tmp / "inputs" / str(self._files)
        folder.mkdir(parents=True)
        path = folder / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path

    def tensors(self, named: dict[str, np.ndarray], name: str = "v.safetensors") -> Path:
        path = self.file(name, b"")
        save_file(named, str(path))
        return path

    def blob_files(self) -> set[str]:
        return {str(p.relative_to(self.store)) for p in self.store.rglob("*") if p.is_file()}

    def blob_path(self, oid: str) -> Path:
        return self.store / oid[:2] / oid[2:]


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert result.exception is None
    return result


def tiny_array(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N_LAYERS, D_MODEL)).astype(np.float32)


def second_model_dir(tmp: Path) -> Path:
    folder = tmp / "tiny-b"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",'
        ' "num_hidden_layers": 2, "hidden_size": 16, "vocab_size": 100}'
    )
    return folder


def _closed_postgres() -> str:
    return f"postgresql://crx:s3cret@127.0.0.1:{free_port()}/crx"


# -- fixtures -------------------------------------------------------------------------------


def _initialised(db: str, tmp_path: Path, model_dir: Path, pairs: Path) -> World:
    w = World(db, tmp_path / "store", tmp_path, model_dir, pairs)
    w.ok("init")
    return w


def _populate(world: World) -> World:
    with world.registry() as reg:
        reg.register_model("tiny", str(world.model_dir), family="llama", role="aligned")
        reg.register_model("tiny-b", str(second_model_dir(world.tmp)), role="base")
        version = reg.register_concept("joy", world.pairs, description="joy vs gloom").record
        vector = reg.save_vector(version.ref, "tiny", tiny_array(), origin="extracted").record
        weight = np.ones((16, D_MODEL), dtype=np.float32)
        fitted = reg.save_map(
            "tiny", "tiny-b", 1, 1, weight, np.zeros(16, np.float32), solver="ols"
        )
        reg.record_evaluation(
            "tiny-b", "emotion", {"accuracy": 0.75, "kl": 0.1}, vector_id=vector.id, alpha=4.0
        )
    world.facts.update(
        vector_id=vector.id,
        vector_oid=vector.oid,
        pairs_oid=version.pairs_oid,
        map_id=fitted.record.id,
        map_oid=fitted.record.oid,
    )
    return world


@pytest.fixture
def world(db_url: str, tmp_path: Path, tiny_model_dir: Path, pairs_file: Path) -> World:
    """An initialised, empty registry on each database kind, with a local store."""
    return _initialised(db_url, tmp_path, tiny_model_dir, pairs_file)


@pytest.fixture
def populated(world: World) -> World:
    """A registry holding one of everything: models, a concept, a vector, a map, evaluations."""
    return _populate(world)


@pytest.fixture
def sqlite_world(
    tmp_path: Path, sqlite_template: Path, tiny_model_dir: Path, pairs_file: Path
) -> World:
    """As `world`, on SQLite only (for behaviour that does not depend on the database)."""
    shutil.copy(sqlite_template, tmp_path / "registry.db")
    return _initialised(
        f"sqlite:///{tmp_path / 'registry.db'}", tmp_path, tiny_model_dir, pairs_file
    )


@pytest.fixture
def populated_sqlite(sqlite_world: World) -> World:
    return _populate(sqlite_world)
