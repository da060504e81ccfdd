"""The README's governance walkthrough, run exactly as written, on a real PostgreSQL server with
two real login roles.

The test reads the ``console`` block under the README's "Governance walkthrough" heading and
runs it: ``$ export NAME=VALUE`` sets a variable, ``$ cat > FILE <<'EOF'`` writes a file,
``$ printf '%s\\n' "$VAR" | crx ...`` feeds a password on stdin, ``$ psql URL -c SQL`` runs
PostgreSQL's own client, and every other ``$ crx ...`` line runs the CLI. Each command's output
must match the lines the README shows under it, after masking what changes from run to run
(times, oids, ports, temporary paths); a line ``…`` stands for any lines. The README's
variables (``$OWNER``, ``$WRITER1`` and the rest) are bound to this test's server and to the
tiny random-weight models standing in for SmolLM2 and Gemma.

Set ``CRX_WALKTHROUGH_RECORD=FILE`` to write the transcript this run produced (to refresh the
README after a change of output).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from crx.cli.main import cli
from tests.conftest import IN_CI
from tests.servers import PostgresServer
from tests.tiny_models import CORPUS

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "### Governance walkthrough"
PASSWORDS = {"WRITER1_PASSWORD": "w1-Correct-Horse", "APPROVER1_PASSWORD": "a1-Battery-Staple"}


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)
    heredoc: list[str] | None = None


def walkthrough_steps(text: str) -> list[Step]:
    """The commands of the walkthrough block, each with the output the README shows."""
    start = text.index(HEADING)
    block = text[text.index("```console\n", start) + len("```console\n") :]
    block = block[: block.index("\n```")]
    steps: list[Step] = []
    lines = iter(block.splitlines())
    for line in lines:
        if line.startswith("$ "):
            step = Step(line[2:])
            if "<<'EOF'" in line:
                step.heredoc = []
                for body in lines:
                    if body == "EOF":
                        break
                    step.heredoc.append(body)
            steps.append(step)
        elif steps:
            steps[-1].expected.append(line)
    return steps


def _display(text: str, tmp: Path) -> list[str]:
    """The output as the README shows it: this run's folders and server by the README's names."""
    text = text.replace(str(tmp), "/work")
    text = re.sub(r"127\.0\.0\.1:\d+", "db.internal", text)
    text = text.replace("postgresql+psycopg://", "postgresql://")
    return [line.rstrip() for line in text.splitlines()]


def _mask(line: str) -> str:
    """What changes from run to run, masked: times and oids."""
    line = re.sub(
        r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?( UTC|[+-]\d\d:\d\d)?", "<time>", line
    )
    return re.sub(r"\b[0-9a-f]{12,64}\b", "<oid>", line)


def matches(expected: list[str], actual: list[str]) -> bool:
    """``expected`` equals ``actual`` where a ``…`` line matches any run of lines."""
    if not expected:
        return not actual
    if expected[0] == "…":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


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
    pairs_file: Path,
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
    shutil.copy(pairs_file, work / "happiness.json")
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
    env: dict[str, str] = {}
    transcript: list[str] = []
    failures: list[str] = []

    where = url("postgres").rsplit("@", 1)[1]  # 127.0.0.1:PORT/DATABASE

    def expand(text: str) -> str:
        text = re.sub(r"\$\{?(\w+)\}?", lambda m: {**variables, **env}.get(m[1], m[0]), text)
        return text.replace("db.internal/crx", where)

    for step in walkthrough_steps(README.read_text(encoding="utf-8")):
        command = step.command
        stdin = None
        if command.startswith("export "):
            name, _, value = command[len("export ") :].partition("=")
            # The README's URLs name its server; this test's bindings of them win.
            env[name] = variables.get(name) or expand(value.strip('"'))
            if name == "CRX_DATABASE_URL":
                monkeypatch.setenv(name, env[name])
            output, code = "", 0
        elif step.heredoc is not None:
            target = shlex.split(command)[2]
            (work / target).write_text("\n".join(step.heredoc) + "\n")
            output, code = "", 0
        elif command.startswith("psql "):
            argv = [expand(a) for a in shlex.split(command)]
            done = subprocess.run(
                [str(psql), *argv[1:]], capture_output=True, text=True, check=False, timeout=60
            )
            output, code = done.stdout + done.stderr, done.returncode
        else:
            if " | " in command:
                feed, command = command.split(" | ", 1)
                stdin = expand(shlex.split(feed)[-1]) + "\n"
            argv = [expand(a) for a in shlex.split(command)]
            assert argv[0] == "crx", command
            result = CliRunner().invoke(
                cli, argv[1:], input=stdin, prog_name="crx", catch_exceptions=False
            )
            # What a person reads: the output, or on failure the error (progress lines, with
            # their timings, go to stderr too and are left out).
            code = result.exit_code
            output = result.stdout if code == 0 else result.stdout + result.stderr
        shown = _display(output, tmp_path)
        transcript += [f"$ {step.command}", *(step.heredoc or [])]
        transcript += ["EOF"] if step.heredoc is not None else []
        transcript += shown
        if not matches([_mask(x) for x in step.expected], [_mask(x) for x in shown]):
            failures.append(
                f"$ {step.command}\n  exit {code}\n  expected:\n    "
                + "\n    ".join(step.expected)
                + "\n  got:\n    "
                + "\n    ".join(shown)
            )
    record = os.environ.get("CRX_WALKTHROUGH_RECORD")
    if record:
        Path(record).write_text("\n".join(transcript) + "\n")
    assert failures == [], "\n\n".join(failures)
    # the secrets given on stdin never show up anywhere in the output
    assert not any(p in line for p in PASSWORDS.values() for line in transcript)
