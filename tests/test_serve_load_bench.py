"""``benchmarks/serve_load.py`` still runs: its load driver against a real ``crx serve``.

Not a timing test (no latency is asserted): three clients for two seconds against a tiny SQLite
registry, so the benchmark cannot rot between its runs. Every route must be hit without one
error, and a route that fails must be counted as an error, not timed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import serve_load
from crx.registry import Registry
from tests.cli_world import second_model_dir, tiny_array
from tests.databases import sqlite_url

D_MODEL = 32


@pytest.fixture
def tiny(tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Two models, a concept with a vector on the first and a map into the second."""
    monkeypatch.setenv("CRX_ACTOR", "tester")
    db, store = sqlite_url(tmp_path, sqlite_template), str(tmp_path / "store")
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 4,'
        ' "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,'
        ' "vocab_size": 100}'
    )
    (tmp_path / "joy.json").write_text(json.dumps([{"positive": "glad", "negative": "sad"}]))
    with Registry(db, store) as reg:
        reg.register_model("tiny", str(model_dir))
        reg.register_model("tiny-b", str(second_model_dir(tmp_path)))
        reg.register_concept("joy", tmp_path / "joy.json")
        reg.save_vector("joy@1", "tiny", tiny_array(1), origin="extracted")
        weight = np.random.default_rng(0).standard_normal((16, D_MODEL)).astype(np.float32)
        reg.save_map("tiny", "tiny-b", 2, 1, weight, None, solver="ols", r2=0.9)
        assert reg.plan("tiny-b", ["joy"]).concepts[0].chosen is not None  # a route to plan
    return db, store


def test_the_load_driver_hits_every_route_without_errors(
    tiny: tuple[str, str], tmp_path: Path
) -> None:
    db, store = tiny
    draws = {
        "page": lambda rng: "/api/models/" + rng.choice(["tiny", "tiny-b"]),
        "plan": lambda rng: "/api/plan?target=tiny-b&concept=joy",
        "audit": lambda rng: "/api/audit?actor=tester&limit=50",
    }
    run = serve_load.measure(
        db, store, tmp_path, draws, workers=1, clients=3, seconds=2.0, warmup=0.5
    )
    assert run["errors"] == 0, run["error_samples"]
    assert all(run["routes"][route]["n"] > 0 for route in serve_load.ROUTES), run["routes"]
    assert run["requests"] == sum(r["n"] for r in run["routes"].values())
    assert run["server_cpu_s"] > 0
    table = serve_load.render(
        {
            "clients": 3,
            "seconds": 2.0,
            "page_path": "/api/models/{model}",
            "page_is_html": False,
            "machine": {"cpus": 2},
            "runs": [run],
        }
    )
    assert "| 1 | 0.0 s | plan |" in table


def test_a_failing_route_is_counted_as_an_error(tiny: tuple[str, str], tmp_path: Path) -> None:
    db, store = tiny
    draws = {
        "page": lambda rng: "/api/models/no-such-model",  # a 404
        "plan": lambda rng: "/api/plan?target=tiny-b&concept=joy",
        "audit": lambda rng: "/api/audit?limit=0",  # a 400
    }
    with serve_load.serve(db, store, tmp_path, workers=1) as server:
        load = serve_load.drive(server.url, draws, clients=2, seconds=0.5)
    assert load.errors["page"] > 0
    assert load.errors["audit"] > 0
    assert load.latencies["page"] == load.latencies["audit"] == []
    assert load.errors["plan"] == 0
    assert load.latencies["plan"]
    assert any("404" in sample for sample in load.error_samples)
