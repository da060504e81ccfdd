"""The README's governance walkthrough, run exactly as written, on a real PostgreSQL server with
two real login roles.

The test reads the ``console`` block under the README's "Governance walkthrough" heading and
runs it: ``$ export NAME=VALUE`` sets a variable, ``$ cat > FILE <<'EOF'`` writes a file,
``$ printf '%s\\n' "$VAR" | crx ...`` feeds a password on stdin, ``$ psql URL -c SQL`` runs
PostgreSQL's own client, and every other ``$ crx ...`` line runs the CLI. Each command's output
must match the lines the README shows under it, after masking what changes from run to run
(times, oids, ports, temporary paths); a line ``…`` stands for any lines. The README's
variables (``$OWNER``, ``$WRITER1`` and the rest) are bound to this test's server and to the
tiny random-weight models standing in for SmolLM2 and Gemma. The runner is
``tests/readme_console.py``'s, which the two-minute tour's test shares.

Set ``CRX_WALKTHROUGH_RECORD=FILE`` to write the transcript this run produced (to refresh the
README after a change of output).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.readme_console import README, Console, console_steps
from tests.servers import PostgresServer
from tests.tiny_models import CORPUS

HEADING = "### Governance walkthrough"
PASSWORDS = {"WRITER1_PASSWORD": "w1-Correct-Horse", "APPROVER1_PASSWORD": "a1-Battery-Staple"}


def _display(text: str, tmp: Path) -> list[str]:
    """The output as the README shows it: this run's folders and server by the README's names."""
    text = text.replace(str(tmp), "/work")
    text = re.sub(r"127\.0\.0\.1:\d+", "db.internal", text)
    text = text.replace("postgresql+psycopg://", "postgresql://")
    return [line.rstrip() for line in text.splitlines()]


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A cluster of its own: roles are cluster-wide, and the walkthrough creates them."""
    try:
        server = PostgresServer.start()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"cannot start PostgreSQL: {exc} (CI must run every backend)")
        pytest.skip(f"cannot start PostgreSQL: {exc}")
    yield server
    server.stop()


@pytest.mark.postgres  # its own server (own_server), which the conftest hook cannot see
def test_the_readme_governance_walkthrough_runs_as_written(
    own_server: PostgresServer,
    model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    psql = own_server.bindir / "psql"
    database = "crx"
    own_server.execute(f"CREATE DATABASE {database}")

    def url(user: str, password: str | None = None) -> str:
        return own_server.url(database, user=user, password=password).replace("+psycopg", "")

    work = tmp_path / "work"
    work.mkdir()
    (work / "neutral.txt").write_text("\n".join(CORPUS) + "\n")
    variables = {
        "OWNER": url("postgres"),
        "WRITER1": url("writer1", PASSWORDS["WRITER1_PASSWORD"]),
        "APPROVER1": url("approver1", PASSWORDS["APPROVER1_PASSWORD"]),
        "SMOLLM": str(model_dirs["llama"]),
        "GEMMA": str(model_dirs["gpt2"]),
        **PASSWORDS,
    }
    monkeypatch.chdir(work)
    monkeypatch.setenv("CRX_STORE_URL", str(tmp_path / "store"))
    monkeypatch.delenv("CRX_ACTOR")
    where = url("postgres").rsplit("@", 1)[1]  # 127.0.0.1:PORT/DATABASE

    def run_psql(argv: list[str]) -> tuple[str, int]:
        done = subprocess.run(
            [str(psql), *argv[1:]], capture_output=True, text=True, check=False, timeout=60
        )
        return done.stdout + done.stderr, done.returncode

    console = Console(
        work,
        show=lambda output: _display(output, tmp_path),
        setenv=monkeypatch.setenv,
        variables=variables,
        handlers={"psql": run_psql},
        rewrite=lambda text: text.replace("db.internal/crx", where),
    )
    console.run(console_steps(README.read_text(encoding="utf-8"), HEADING),
                record="CRX_WALKTHROUGH_RECORD")  # fmt: skip
    assert console.failures == [], "\n\n".join(console.failures)
    # the secrets given on stdin never show up anywhere in the output
    assert not any(p in line for p in PASSWORDS.values() for line in console.transcript)
