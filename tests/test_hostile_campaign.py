"""Five cases of the hostile-input campaign (``benchmarks/hostile_campaign.py``), so it cannot rot.

The campaign itself runs several hundred cases on two checkouts and is a benchmark, not a test;
here five of them run on this checkout (SQLite, PostgreSQL and S3 among them) through the same
runner, and each must end as crx promises: the good vector file accepted, the rest refused with
one ``Error:`` line and nothing changed, the secret never shown.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.hostile_campaign import Case, campaign
from tests.servers import MotoServer, PostgresServer

ROOT = Path(__file__).resolve().parent.parent

PICKED = {
    "vector good.safetensors [sqlite]": "ok",
    "name dash-rf -> register concept [postgres]": "clean_error",
    "pairs deep.json [s3]": "clean_error",
    "spec alias-bomb.yaml -> diff [sqlite]": "clean_error",
    "secret --db empty user -> list models [postgres]": "clean_error",
}


def test_five_campaign_cases_end_as_promised(
    postgres_server: PostgresServer, moto_server: MotoServer
) -> None:
    def select(cases: list[Case]) -> list[Case]:
        chosen = [case for case in cases if case.id in PICKED]
        assert len(chosen) == len(PICKED)
        return chosen

    report = campaign([("here", ROOT, sys.executable)], postgres_server, moto_server,
                      select=select, timeout=120)  # fmt: skip
    run = report["runs"]["here"]
    assert run["results"] == PICKED
    assert run["inputs_tried"] == 5
    assert run["not_clean"] == 0
