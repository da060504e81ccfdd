"""The ``postgres`` and ``s3`` markers: applied to every test that needs the server, so a user
without one runs ``pytest -m "not postgres and not s3"``.

Each check runs pytest in a subprocess, on a few test modules that reach the servers in every
way the suite does: the parametrized ``db_url`` / ``store_url`` fixtures (``[postgres]``,
``[s3]``), the server fixtures used directly (``test_declare``, ``test_policy_spec``) and a test
with a server of its own (``test_walkthrough``). ``crx_no_servers``, a plugin written for the
run, fails any test whose setup would start a server, and writes each collected test's server
markers to a file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = [
    "tests/test_registry_store.py",
    "tests/test_declare.py",
    "tests/test_policy_spec.py",
    "tests/test_walkthrough.py",
]
NO_SERVERS = """
import os
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    if fixturedef.argname in ("postgres_server", "moto_server"):
        pytest.fail(f"{request.node.nodeid} starts a server ({fixturedef.argname})")

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    with open(os.environ["CRX_MARKERS_OUT"], "w") as out:
        for item in items:
            marks = sorted({m.name for m in item.iter_markers()} & {"postgres", "s3"})
            out.write(item.nodeid + "\\t" + ",".join(marks) + "\\n")
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "crx_no_servers.py").write_text(NO_SERVERS)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "CI": "",
        "CRX_MARKERS_OUT": str(tmp_path / "markers.tsv"),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "crx_no_servers", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _collected(tmp_path: Path, *args: str) -> dict[str, set[str]]:
    """Test id → its server markers, of the tests the run would run (after ``-m``)."""
    result = _pytest(tmp_path, "--collect-only", "-q", *MODULES, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = {line for line in result.stdout.splitlines() if "::" in line}
    rows = [line.split("\t") for line in (tmp_path / "markers.tsv").read_text().splitlines()]
    marks = {test: set(filter(None, names.split(","))) for test, names in rows}
    assert ran <= set(marks)
    return {test: marks[test] for test in ran}


def test_the_markers_select_exactly_the_tests_that_need_a_server(tmp_path: Path) -> None:
    every = _collected(tmp_path)
    without = {test for test, marks in every.items() if not marks}  # what -m "not ..." keeps
    assert without  # the SQLite, local-store tests stay
    postgres = {test for test, marks in every.items() if "postgres" in marks}
    s3 = {test for test, marks in every.items() if "s3" in marks}
    # every way of reaching a server is marked ...
    store = "tests/test_registry_store.py::"
    assert f"{store}test_gc_removes_only_unreferenced_old_blobs[postgres]" in postgres
    assert f"{store}test_gc_removes_only_unreferenced_old_blobs[sqlite]" in without
    assert f"{store}test_registry_works_over_every_store_backend[sqlite-s3]" in s3 - postgres
    assert f"{store}test_registry_works_over_every_store_backend[postgres-s3]" in postgres & s3
    assert f"{store}test_registry_works_over_every_store_backend[sqlite-file]" in without
    kill = (
        "tests/test_declare.py::test_apply_on_postgres_and_s3_survives_a_kill_and_stores_every_blob"
    )
    assert kill in postgres & s3
    assert "tests/test_policy_spec.py::test_only_the_owner_applies_policies_on_postgres" in postgres
    walkthrough = (
        "tests/test_walkthrough.py::test_the_readme_governance_walkthrough_runs_as_written"
    )
    assert walkthrough in postgres
    # ... and nothing else: a marked test names its server in its id (or is the walkthrough)
    for test in postgres:
        assert "postgres" in test or test == walkthrough, test
    for test in s3:
        assert "s3" in test, test


def test_deselecting_them_runs_with_neither_server(tmp_path: Path) -> None:
    picked = ["tests/test_registry_store.py", "-k", "every_store_backend or gc_removes_only"]
    ran = _pytest(tmp_path, "-q", *picked, "-m", "not postgres and not s3")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "3 passed" in ran.stdout
    kept = [line.split("\t") for line in (tmp_path / "markers.tsv").read_text().splitlines()]
    assert sorted(test.split("::")[1] for test, _ in kept) == [
        "test_gc_removes_only_unreferenced_old_blobs[sqlite]",
        "test_registry_works_over_every_store_backend[sqlite-file]",
        "test_registry_works_over_every_store_backend[sqlite-memory]",
    ]
    # The plugin does refuse a server: without the deselection the same tests fail.
    unfiltered = _pytest(tmp_path, "-q", *picked)
    assert unfiltered.returncode != 0
    assert "starts a server (postgres_server)" in unfiltered.stdout
    assert "starts a server (moto_server)" in unfiltered.stdout
