"""Credentials never reach the user: every command, with secret-bearing URLs, in every output.

The URLs are the ones that leaked before: an empty user (``postgresql://:SECRET@host``), a
password in the query (``?password=SECRET``), a password holding an unencoded ``@``
(``u:SEC@RET@host``), and an ``s3://KEY:SECRET@bucket`` store whose endpoint is down (so
botocore's own message comes back). Each command's stdout, stderr and ``--json`` output is
searched for every secret.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from crx.cli.main import cli
from crx.registry.config import redact, scrub
from tests.servers import free_port

SECRETS = ("S3cretEmptyUser", "S3cretQuery", "S3cret@Half", "S3cretKeyForS3", "S3cretUserinfo")


def _database_urls() -> list[str]:
    port = free_port()  # nothing listens there
    return [
        f"postgresql://:S3cretEmptyUser@127.0.0.1:{port}/crx",
        f"postgresql://crx@127.0.0.1:{port}/crx?password=S3cretQuery&sslmode=disable",
        f"postgresql://crx:S3cret@Half@127.0.0.1:{port}/crx",
        f"postgresql://crx:S3cretUserinfo@127.0.0.1:{port}/crx",
    ]


COMMANDS = [
    ["init"],
    ["db", "current"],
    ["list", "models"],
    ["list", "models", "--json"],
    ["store", "verify"],
    ["store", "gc", "--json"],
    ["register", "concept", "joy", "--pairs", "PAIRS"],
]


def _leaks(text: str) -> list[str]:
    return [s for s in (*SECRETS, "S3cret@", "Half@127") if s in text]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_no_command_prints_a_database_secret(
    command: list[str], tmp_path: Path, pairs_file: Path
) -> None:
    argv = [str(pairs_file) if a == "PAIRS" else a for a in command]
    for url in _database_urls():
        result = CliRunner().invoke(cli, ["--db", url, "--store", str(tmp_path / "s"), *argv])
        output = result.stdout + result.stderr
        assert result.exit_code == 1, output
        assert output.startswith("Error: cannot open the database postgresql")
        assert _leaks(output) == [], output


@pytest.mark.parametrize("command", COMMANDS[:1] + COMMANDS[4:], ids=" ".join)
def test_no_command_prints_a_store_secret(
    command: list[str],
    tmp_path: Path,
    pairs_file: Path,
    sqlite_template: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    shutil.copy(sqlite_template, tmp_path / "r.db")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3cretKeyForS3")
    argv = [str(pairs_file) if a == "PAIRS" else a for a in command]
    store = "s3://KEYID:S3cretKeyForS3@crx-bucket/store"
    result = CliRunner().invoke(
        cli, ["--db", f"sqlite:///{tmp_path / 'r.db'}", "--store", store, *argv]
    )
    output = result.stdout + result.stderr
    assert result.exit_code == 1, output
    assert "Error: cannot use the store s3://KEYID:***@crx-bucket/store" in output
    assert _leaks(output) == [], output


def test_redact_and_scrub_cover_every_credential_form() -> None:
    cases = {
        "postgresql://:pw1234@h/x": "postgresql://:***@h/x",
        "postgresql://u:pw@h:5/x?password=pw5678&sslmode=require": (
            "postgresql://u:***@h:5/x?password=***&sslmode=require"
        ),
        "postgresql://u:SEC@RET@h/x": "postgresql://u:***@h/x",
        "s3://KEY:S3E@bucket/x": "s3://KEY:***@bucket/x",
        "postgresql://u:p@h/x": "postgresql://u:***@h/x",  # a one-letter password, in place
        "postgresql://crx@h/x": "postgresql://crx@h/x",
        "/tmp/store": "/tmp/store",
        "memory://crx/store": "memory://crx/store",
    }
    assert {url: redact(url) for url in cases} == cases
    message = "failed for https://KEY:S3cretKey@bucket.example (S3cretKey rejected)"
    assert scrub(message, "s3://KEY:S3cretKey@bucket/x") == (
        "failed for https://KEY:***@bucket.example (*** rejected)"
    )
