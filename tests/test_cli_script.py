"""The installed ``crx`` script in a subprocess: real exit codes and stderr, ``store verify``
failing with exit 1, and light commands that never import torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_world import World, _closed_postgres

CRX = Path(sys.executable).with_name("crx")


def crx_subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CRX), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


# -- the real script, in a subprocess -------------------------------------------------------


def test_subprocess_exit_codes_and_stderr(pairs_file: Path) -> None:
    home = Path(os.environ["CRX_HOME"])
    done = crx_subprocess("init")  # the embedded default under CRX_HOME
    assert done.returncode == 0, done.stderr
    assert f"database sqlite:///{home / 'registry.db'}: created" in done.stdout

    bad = crx_subprocess("register", "concept", "../evil", "--pairs", str(pairs_file))
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr == "Error: invalid concept name '../evil': it contains a path separator\n"

    # the database URL from the environment, as a team sets it
    unreachable = crx_subprocess("list", "models", env={"CRX_DATABASE_URL": _closed_postgres()})
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("Error: cannot open the database postgresql://crx:***@")
    assert len(unreachable.stderr.splitlines()) == 1

    usage = crx_subprocess("list", "modelz")
    assert usage.returncode == 2
    assert "No such command 'modelz'" in usage.stderr
    assert "Traceback" not in usage.stderr

    # --pairs or --emotion: neither is one Error line, as two options that contradict are
    missing = crx_subprocess("register", "concept", "joy")
    assert missing.returncode == 1
    assert missing.stderr == "Error: give either --pairs FILE or --emotion EMOTION\n"
    required = crx_subprocess("register", "model", "tiny")
    assert required.returncode == 2
    assert "Missing option '--path'" in required.stderr


def test_subprocess_store_verify_exits_1_on_a_corrupt_blob(populated_sqlite: World) -> None:
    w = populated_sqlite
    args = ("--db", w.db, "--store", str(w.store), "store", "verify")
    assert crx_subprocess(*args).returncode == 0
    oid = w.facts["vector_oid"]
    w.blob_path(oid).chmod(0o644)
    w.blob_path(oid).write_bytes(b"garbage")
    done = crx_subprocess(*args)
    assert done.returncode == 1
    assert f"corrupt {oid} <- vector {w.facts['vector_id']}" in done.stdout
    assert done.stderr == "Error: 1 blob(s) missing or corrupt\n"


@pytest.mark.parametrize("args", [["--help"], ["list", "models"]])
def test_light_commands_do_not_import_torch(args: list[str]) -> None:
    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli; "
        f"r = CliRunner().invoke(cli, {args!r}); "
        "assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
