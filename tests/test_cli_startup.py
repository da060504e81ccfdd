"""A CLI that answers quickly: the read commands import only what they use.

``crx show`` and ``crx list`` run in a fresh interpreter (a subprocess, as a user runs them) on
a real SQLite registry. Afterwards numpy, torch, transformers, safetensors, fsspec, matplotlib
and alembic (the schema check reads ``alembic_version`` itself) are not in ``sys.modules``, nor
is governance, the planner or the spec files' code and schemas; and the only pydantic schemas
built are those of the records the command prints (the others are ``defer_build``: building one
costs milliseconds at every start); ``show model`` and ``list vectors`` import no SQLAlchemy
either (the quick read path). A behaviour, not a timing (the timings are
``benchmarks/catalog_bench.py``). Shell completion is click's, through the same lazy commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crx import Registry
from tests.tiny_models import PAIRS

HEAVY = ("numpy", "torch", "transformers", "safetensors", "fsspec", "matplotlib", "gguf", "alembic")
# What the probe also looks for and must find where the catalogue answers: the command really
# reached the database through it.
NEEDED = ("sqlalchemy",)
# Parts of crx a read command has no use for (governance, plans, spec files): the probe reports
# any of these, or a module under one, that the command imported.
UNUSED = (
    "crx.registry.governance",
    "crx.registry.resolve",
    "crx.registry.declare",
    "crx.schemas.governance",
    "crx.schemas.plan",
    "crx.schemas.declare",
    "crx.schemas.spec",
)

# Runs one crx command in this interpreter, then prints the heavy modules it imported and the
# crx pydantic models whose schema it built.
PROBE = """
import json, sys
from crx.cli.main import cli
try:
    cli(sys.argv[1:], prog_name="crx")
except SystemExit as exc:
    code = exc.code
asked = json.loads(sys.stdin.read())
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(asked["heavy"]))
unused = sorted(
    m for m in sys.modules if any(m == u or m.startswith(u + ".") for u in asked["unused"])
)
from pydantic import BaseModel
built = sorted({
    value.__name__
    for name, module in list(sys.modules.items()) if name.startswith("crx.")
    for value in vars(module).values()
    if isinstance(value, type) and issubclass(value, BaseModel) and value.__pydantic_complete__
})
print("HEAVY=" + json.dumps({"code": code, "heavy": heavy, "unused": unused, "built": built}))
"""


@pytest.fixture
def home(tmp_path: Path, tiny_model_dir: Path) -> Path:
    with Registry(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "store")) as reg:
        reg.init()
        reg.register_model("tiny", str(tiny_model_dir))
        reg.register_concept("joy", PAIRS)
        reg.save_vector("joy", "tiny", np.ones((4, 32), np.float32), origin="imported")
    return tmp_path


def _probe(home: Path, *args: str) -> tuple[int, list[str], list[str], list[str], str]:
    env = {
        **os.environ,
        "CRX_DATABASE_URL": f"sqlite:///{home / 'registry.db'}",
        "CRX_STORE_URL": str(home / "store"),
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        input=json.dumps({"heavy": HEAVY + NEEDED, "unused": UNUSED}),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = result.stdout.splitlines()[-1]
    assert line.startswith("HEAVY="), result.stdout + result.stderr
    found = json.loads(line.removeprefix("HEAVY="))
    return found["code"], found["heavy"], found["unused"], found["built"], result.stdout


# Each read command, and the record schema it prints (plus the generic `Page` for a listing).
READS = {
    ("show", "model", "tiny"): "ModelRecord",
    ("show", "concept", "joy"): "ConceptVersionRecord",
    ("show", "vector", "1"): "VectorRecord",
    ("list", "vectors", "--limit", "100"): "VectorRecord",
    ("list", "models", "--json"): "ModelRecord",
    ("list", "concepts"): "ConceptRecord",
}
# The two the quick read path answers on SQLite (`crx.registry.catalog.quickread`): no
# SQLAlchemy at all.
QUICK = {("show", "model", "tiny"), ("list", "vectors", "--limit", "100")}


@pytest.mark.parametrize("args", list(READS), ids=lambda a: " ".join(a))
def test_read_commands_import_no_numpy_torch_or_transformers(home: Path, args: tuple) -> None:
    code, heavy, unused, built, out = _probe(home, *args)
    assert code in (0, None), out
    assert "tiny" in out or "joy" in out  # the command did its work
    assert heavy == ([] if args in QUICK else list(NEEDED))
    assert unused == []
    # Only what it printed was validated: no policy, plan or spec schema was built on the way.
    assert READS[args] in built
    assert set(built) <= {READS[args], "Page"}, built


def test_shell_completion_is_served_by_the_crx_entry_point() -> None:
    crx = Path(sys.executable).with_name("crx")
    env = {**os.environ, "_CRX_COMPLETE": "bash_source"}
    script = subprocess.run([str(crx)], env=env, capture_output=True, text=True, timeout=60)
    assert script.returncode == 0
    assert "_crx_completion" in script.stdout
    env = {**os.environ, "_CRX_COMPLETE": "bash_complete", "COMP_WORDS": "crx show m",
           "COMP_CWORD": "2"}  # fmt: skip
    words = subprocess.run([str(crx)], env=env, capture_output=True, text=True, timeout=60)
    assert words.stdout.split() == ["plain,map", "plain,maps", "plain,model"]
