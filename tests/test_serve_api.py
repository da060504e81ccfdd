"""``crx serve``'s JSON API, against a real server process on loopback.

Each backend (SQLite, PostgreSQL) gets one registry, filled through the Python API, and one
``python -m crx --db ... --store ... serve`` process for the whole module; every response is
compared with what the facade itself returns (``model_dump(mode="json")``, which is what
``crx ... --json`` prints). Separate servers show an S3 store, ``--workers 2`` and a database
that goes away (503). The statuses of errors that no read can cause (a conflict, a refusal)
are checked on the same app, called in-process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from click.testing import CliRunner

from crx.cli.main import cli
from crx.registry import Registry
from crx.registry import errors as crx_errors
from crx.schemas.governance import EvidenceRule, PolicySpec
from tests.cli_world import second_model_dir, tiny_array
from tests.databases import postgres_url, sqlite_url
from tests.servers import SUPERUSER_PASSWORD, MotoServer, PostgresServer, _wait_for_port, free_port

N_LAYERS, D_MODEL = 4, 32


# -- a server process -------------------------------------------------------------------


@dataclass
class Served:
    """A ``crx serve`` process, the registry it reads (opened here too) and its log."""

    process: subprocess.Popen[bytes]
    client: httpx.Client
    reg: Registry
    db: str
    store: str
    log: Path
    facts: dict[str, Any]

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self) -> str:
        """Stop the server; its whole log."""
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reg.close()
        return self.log.read_text(encoding="utf-8", errors="replace")


def start_server(
    db: str, store: str, folder: Path, env: dict[str, str], *extra: str
) -> tuple[subprocess.Popen[bytes], httpx.Client, Path]:
    port = free_port()
    log = folder / f"serve-{port}.log"
    command = [sys.executable, "-m", "crx", "--db", db, "--store", store, "serve"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait_for_port(port, 60, process)
    except RuntimeError:
        process.kill()
        raise RuntimeError(log.read_text()) from None
    return process, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30), log


def server_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRX_")}
    env.update(CRX_HOME=str(home), CRX_ACTOR="tester", **(extra or {}))
    return env


def populate(reg: Registry, folder: Path) -> dict[str, Any]:
    """Three models, two concepts (joy has two versions), vectors, a map, evaluations, an
    alias moved once, an approval, a deprecation and a policy."""
    model_dir = folder / "tiny"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 4,'
        ' "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,'
        ' "vocab_size": 100}'
    )
    reg.register_model("tiny", str(model_dir), family="llama", role="aligned")
    reg.register_model("tiny-b", str(second_model_dir(folder)), role="base")
    reg.register_model("tiny-c", str(model_dir), role="base")
    pairs = [{"positive": f"glad {i}", "negative": f"sad {i}"} for i in range(3)]
    (folder / "joy1.json").write_text(json.dumps(pairs[:2]))
    (folder / "joy2.json").write_text(json.dumps(pairs))
    (folder / "calm.json").write_text(json.dumps([{"positive": "calm", "negative": "angry"}]))
    reg.register_concept("joy", folder / "joy1.json", description="joy vs gloom")
    reg.register_concept("joy", folder / "joy2.json")
    reg.register_concept("calm", folder / "calm.json")
    v1 = reg.save_vector("joy@1", "tiny", tiny_array(1), origin="extracted").record
    v2 = reg.save_vector("joy@2", "tiny", tiny_array(2), origin="extracted").record
    v3 = reg.save_vector("calm@1", "tiny", tiny_array(3), origin="extracted").record
    weight = np.random.default_rng(0).standard_normal((16, D_MODEL)).astype(np.float32)
    fitted = reg.save_map(
        "tiny", "tiny-b", 2, 1, weight, np.zeros(16, np.float32), solver="ols", r2=0.9
    ).record
    reg.save_map("tiny", "tiny-c", 2, 2, np.eye(D_MODEL, dtype=np.float32), None, solver="ols")
    reg.record_evaluation("tiny", "emotion", {"accuracy": 0.8}, vector_id=v2.id, alpha=4.0)
    reg.record_evaluation("tiny", "emotion", {"accuracy": 0.5}, vector_id=None, alpha=0.0)
    reg.record_evaluation("tiny", "other", {"score": 1.5}, vector_id=v3.id, alpha=2.0)
    reg.set_alias("joy@1", "tiny", "staging", reason="first")
    reg.set_alias("joy@2", "tiny", "staging", expect=v1.id, reason="second")
    reg.approve("joy@2", "tiny", vector_id=v2.id, reason="looks right")
    reg.deprecate("calm@1", model="tiny", reason="leaked prompts")
    reg.put_policy(
        PolicySpec(
            name="joy-gate",
            concept="joy",
            evidence=[EvidenceRule(task="emotion", metric="accuracy", min=0.7)],
        )
    )
    return {"v1": v1.id, "v2": v2.id, "v3": v3.id, "map": fitted.id}


def served_backend(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    prefix: str,
    fill: Callable[[Registry, Path], dict[str, Any]],
) -> Iterator[Served]:
    """A module fixture's body: a registry on ``request.param`` (sqlite or postgres) filled by
    ``fill`` through the Python API, and one ``crx serve`` process over it."""
    folder = tmp_path_factory.mktemp(f"{prefix}-{request.param}")
    if request.param == "sqlite":
        db = sqlite_url(folder, sqlite_template)
    else:
        db = postgres_url(request.getfixturevalue("postgres_server"))
    store = str(folder / "store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRX_ACTOR", "tester")
        mp.delenv("CRX_DATABASE_URL", raising=False)
        mp.delenv("CRX_STORE_URL", raising=False)
        reg = Registry(db, store)
        reg.init()
        facts = fill(reg, folder)
    process, client, log = start_server(db, store, folder, server_env(folder / "home"))
    server = Served(process, client, reg, db, store, log, facts)
    yield server
    text = server.stop()
    # Nothing the server logged, in any test, shows a credential or a traceback.
    assert SUPERUSER_PASSWORD not in text
    assert "Traceback" not in text


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[Served]:
    yield from served_backend(request, tmp_path_factory, sqlite_template, "serve", populate)


def dumped(value: Any) -> Any:
    if isinstance(value, list):
        return [v.model_dump(mode="json") for v in value]
    return value.model_dump(mode="json")


# -- reads equal the facade's records ---------------------------------------------------


def test_every_list_and_record_is_the_facades(served: Served) -> None:
    reg, f = served.reg, served.facts
    assert len(reg.list_models().items) == 3  # the fixture's world is what the test reads
    expected = {
        "/api/models": reg.list_models(),
        "/api/models/tiny": reg.get_model("tiny"),
        "/api/concepts": reg.list_concepts(),
        "/api/concepts/joy": reg.get_concept("joy"),
        "/api/concepts/joy@1": reg.get_concept("joy@1"),
        "/api/concepts/joy/versions": reg.concept_versions("joy"),
        "/api/vectors": reg.list_vectors(),
        f"/api/vectors/{f['v2']}": reg.get_vector(f["v2"]),
        "/api/maps": reg.list_maps(),
        f"/api/maps/{f['map']}": reg.get_map(f["map"]),
        "/api/evaluations": reg.list_evaluations(),
        "/api/aliases": reg.list_aliases(),
        "/api/approvals": reg.list_approvals(),
        "/api/deprecations": reg.list_deprecations(),
        "/api/policies": reg.list_policies(),
        "/api/policies/joy-gate": reg.get_policy("joy-gate"),
        "/api/audit": reg.audit(),
    }
    for path, value in expected.items():
        assert served.get(path) == dumped(value), path
    assert served.get("/api/models")["items"][0]["name"] == "tiny"
    assert served.get("/api/concepts/joy")["version"] == 2
    assert [a["ref"] for a in served.get("/api/aliases")] == ["joy@staging"]
    assert served.get("/api/aliases/joy@staging", model="tiny") == dumped(
        reg.get_alias("joy@staging", "tiny")
    )
    assert served.get("/api/concepts/joy@staging", model="tiny")["version"] == 2
    history = served.get("/api/aliases/joy/history", model="tiny")
    assert history == dumped(reg.alias_history("joy", "tiny"))
    assert [(h["old_vector_id"], h["new_vector_id"]) for h in history] == [
        (None, f["v1"]),
        (f["v1"], f["v2"]),
    ]
    in_force = served.get(
        "/api/aliases/joy/history", model="tiny", alias="staging", at="2999-01-01"
    )
    assert [h["new_vector_id"] for h in in_force] == [f["v2"]]
    lineage = served.get("/api/lineage", ref=f"vector:{f['v2']}")
    assert lineage == dumped(reg.lineage(f"vector:{f['v2']}"))
    assert lineage["root"] == f"vector:{f['v2']}"
    assert served.get("/api/lineage", ref="joy@staging", model="tiny") == lineage


def test_the_registry_is_named_with_credentials_redacted(served: Served) -> None:
    response = served.client.get("/api/models")
    info = served.get("/api/registry")
    assert info["database"] == served.reg.db.display_url
    assert info["store"] == served.reg.store.display_url == served.store
    assert info["schema"] == dumped(served.reg.schema_status())
    assert response.headers["x-crx-database"] == served.reg.db.display_url
    assert response.headers["x-crx-store"] == served.store
    if served.db.startswith("postgresql"):
        assert ":***@" in info["database"]
        assert SUPERUSER_PASSWORD in served.db  # the server was given the password...
    # ... and no response ever shows it.
    for path in ("/api/registry", "/api/plan?target=tiny-b&concept=joy", "/api/nope"):
        answer = served.client.get(path)
        assert SUPERUSER_PASSWORD not in answer.text
        assert SUPERUSER_PASSWORD not in str(answer.headers)


def test_keyset_pages_follow_the_facades(served: Served) -> None:
    reg = served.reg
    names, after = [], None
    while True:
        params = {"limit": 1} | ({"after": after} if after is not None else {})
        page = served.get("/api/models", **params)
        assert page == dumped(reg.list_models(limit=1, after=after))
        names += [m["name"] for m in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert names == ["tiny", "tiny-b", "tiny-c"]
    first = served.get("/api/audit", limit=2)
    assert len(first["items"]) == 2
    rest = served.get("/api/audit", limit=1000, after=first["next_after"])
    everything = served.get("/api/audit")["items"]
    assert first["items"] + rest["items"] == everything
    assert rest["next_after"] is None
    # newest first, as `crx audit`
    assert [e["id"] for e in everything] == sorted((e["id"] for e in everything), reverse=True)
    history = served.get("/api/aliases/joy/history", model="tiny", limit=1)
    assert [h["revision"] for h in history] == [1]


def test_filters_are_the_facades(served: Served) -> None:
    reg, f = served.reg, served.facts
    joy = served.get("/api/vectors", concept="joy")
    assert joy == dumped(reg.list_vectors(concept="joy"))
    assert [v["id"] for v in joy["items"]] == [f["v1"], f["v2"]]
    assert served.get("/api/vectors", model="tiny-b")["items"] == []
    into_b = served.get("/api/maps", target="tiny-b")
    assert [m["id"] for m in into_b["items"]] == [f["map"]]
    assert served.get("/api/maps", source="tiny")["items"] == dumped(
        reg.list_maps(source="tiny").items
    )
    assert len(served.get("/api/maps", source="tiny")["items"]) == 2
    emotion = served.get("/api/evaluations", task="emotion")
    assert {e["vector_id"] for e in emotion["items"]} == {f["v2"], None}
    of_v3 = served.get("/api/evaluations", vector=f["v3"])
    assert of_v3 == dumped(reg.list_evaluations(vector_id=f["v3"]))
    assert [e["task"] for e in of_v3["items"]] == ["other"]
    assert served.get("/api/evaluations", model="tiny-b")["items"] == []
    assert served.get("/api/aliases", model="tiny-b") == []
    assert len(served.get("/api/approvals", vector=f["v2"])) == 1
    assert served.get("/api/approvals", concept="calm") == []
    # audit: each filter, as the facade answers it
    for params in (
        {"object": f"vector:{f['v2']}"},
        {"object": "joy@staging", "model": "tiny"},
        {"action": "alias."},
        {"actor": reg.audit().items[0].actor},
        {"since": "2000-01-01", "until": "2999-12-31"},
        {"until": "2000-01-01"},
    ):
        got = served.get("/api/audit", **params)
        assert got == dumped(reg.audit(**params)), params
    assert served.get("/api/audit", until="2000-01-01")["items"] == []
    actions = [e["action"] for e in served.get("/api/audit", action="alias.")["items"]]
    assert actions
    assert all(a.startswith("alias.") for a in actions)


def _without_time(plan: dict[str, Any]) -> dict[str, Any]:
    assert "created_at" in plan
    return {k: v for k, v in plan.items() if k != "created_at"}


def test_the_plan_is_crx_plan_json(served: Served) -> None:
    reg = served.reg
    cases = [
        ({"target": "tiny-b", "concept": "joy"}, ("tiny-b", ["joy"], {})),
        ({"target": "tiny-b", "concept": ["joy", "calm"]}, ("tiny-b", ["joy", "calm"], {})),
        ({"target": "tiny", "alias": "staging"}, ("tiny", [], {"alias": "staging"})),
        ({"target": "tiny-b", "min_r2": 0.95}, ("tiny-b", [], {"min_r2": 0.95})),
        ({"target": "llama-70b"}, ("llama-70b", [], {})),
    ]
    for params, (target, concepts, options) in cases:
        got = served.get("/api/plan", **params)
        expected = reg.plan(target, concepts, **options).model_dump(mode="json")
        assert _without_time(got) == _without_time(expected), params
    routed = served.get("/api/plan", target="tiny-b", concept="joy")
    [joy] = routed["concepts"]
    assert joy["chosen"]["source_model"] == "tiny"
    assert [h["map_id"] for h in joy["chosen"]["hops"]] == [served.facts["map"]]
    aliased = served.get("/api/plan", target="tiny", alias="staging")
    by_concept = {c["concept"]: c for c in aliased["concepts"]}
    assert by_concept["joy@2"]["alias"]["vector_id"] == served.facts["v2"]
    assert by_concept["calm@1"]["status"] == "needs-steps"  # its only vector is deprecated
    assert served.get("/api/plan", target="llama-70b")["steps"][0]["action"] == "register-model"


def test_downloads_are_crx_export_files(served: Served, tmp_path: Path) -> None:
    from gguf import GGUFReader
    from safetensors import safe_open
    from safetensors.numpy import load, load_file

    vector_id = served.facts["v2"]
    for fmt in ("safetensors", "gguf"):
        response = served.client.get(f"/api/vectors/{vector_id}/download", params={"format": fmt})
        assert response.status_code == 200, response.text
        assert response.headers["content-disposition"] == (
            f'attachment; filename="joy-2-tiny-{vector_id}.{fmt}"'
        )
        out = tmp_path / f"exported.{fmt}"
        # The download is the raw vector (`--raw`): no model is loaded to serve it.
        argv = ["--db", served.db, "--store", served.store, "export", "vector", str(vector_id)]
        argv.append("--raw")
        result = CliRunner().invoke(cli, [*argv, "--format", fmt, "-o", str(out)])
        assert result.exit_code == 0, result.output
        (tmp_path / f"downloaded.{fmt}").write_bytes(response.content)
    # GGUF files are the same bytes; safetensors writes its metadata from a hash map, in an
    # order that changes between processes, so those files are compared by what they hold.
    assert (tmp_path / "downloaded.gguf").read_bytes() == (tmp_path / "exported.gguf").read_bytes()
    downloaded, exported = (
        safe_open(str(tmp_path / f"{which}.safetensors"), "numpy")
        for which in ("downloaded", "exported")
    )
    assert downloaded.metadata() == exported.metadata()
    assert downloaded.metadata()["crx.oid"] == served.reg.get_vector(vector_id).oid
    assert list(downloaded.keys()) == list(exported.keys()) == ["vector"]
    default = served.client.get(f"/api/vectors/{vector_id}/download")  # safetensors
    assert len(default.content) == len((tmp_path / "exported.safetensors").read_bytes())
    np.testing.assert_array_equal(load(default.content)["vector"], exported.get_tensor("vector"))
    tensors = load_file(str(tmp_path / "downloaded.safetensors"))
    np.testing.assert_array_equal(tensors["vector"], served.reg.load_vector(vector_id))
    reader = GGUFReader(str(tmp_path / "downloaded.gguf"))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert reader.fields["controlvector.layer_count"].contents() == N_LAYERS - 1
    assert {t.name for t in reader.tensors} == {f"direction.{i}" for i in range(1, N_LAYERS)}


# -- errors -----------------------------------------------------------------------------


def _error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind, body
    assert "Traceback" not in response.text
    message: str = body["error"]["message"]
    assert message
    return message


def test_errors_are_json_with_their_status(served: Served) -> None:
    get = served.client.get
    assert "'nope'" in _error(get("/api/models/nope"), 404, "ModelNotFound")
    _error(get("/api/concepts/joy@9"), 404, "ConceptNotFound")
    _error(get("/api/vectors/999999"), 404, "VectorNotFound")
    _error(get("/api/vectors/999999/download"), 404, "VectorNotFound")
    _error(get("/api/maps/999999"), 404, "MapNotFound")
    _error(get("/api/aliases/joy@prod", params={"model": "tiny"}), 404, "AliasNotFound")
    _error(get("/api/policies/none-such"), 404, "NotFound")
    _error(get("/api/lineage", params={"ref": "vector:999999"}), 404, "VectorNotFound")
    # bad input the facade refuses
    assert "'joy@@1'" in _error(get("/api/concepts/joy@@1"), 400, "InvalidInput")
    _error(get("/api/audit", params={"object": "what:ever"}), 400, "InvalidInput")
    _error(get("/api/lineage"), 400, "InvalidInput")
    assert "since" in _error(get("/api/audit", params={"since": "someday"}), 400, "InvalidInput")
    at = {"model": "tiny", "at": "someday"}
    _error(get("/api/aliases/joy/history", params=at), 400, "InvalidInput")
    _error(get("/api/aliases/joy", params={"model": "tiny"}), 400, "InvalidInput")
    # bad input FastAPI refuses, in the same shape
    assert "limit" in _error(get("/api/models", params={"limit": 0}), 400, "InvalidInput")
    _error(get("/api/models", params={"limit": 1001}), 400, "InvalidInput")
    _error(get("/api/vectors/abc"), 400, "InvalidInput")
    assert "target" in _error(get("/api/plan"), 400, "InvalidInput")
    fmt = {"format": "onnx"}
    _error(get(f"/api/vectors/{served.facts['v1']}/download", params=fmt), 400, "InvalidInput")
    _error(get("/api/aliases/joy/history"), 400, "InvalidInput")  # model is required
    # unknown routes
    assert "/api/nope" in _error(get("/api/nope"), 404, "NotFound")
    # outside /api an unknown route is the catalogue's HTML 404 page (tests/test_serve_pages.py)
    page = get("/nope/at/all")
    assert (page.status_code, page.headers["content-type"]) == (404, "text/html; charset=utf-8")
    # writes are not served, on any path but the four token-guarded POSTs
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        for path in ("/api/models", "/api/aliases/joy@staging", "/api/nope"):
            response = served.client.request(method, path, json={"vector": 1})
            _error(response, 405, "MethodNotAllowed")
            assert response.headers["allow"] == "GET"
    for method in ("PUT", "PATCH", "DELETE"):
        response = served.client.request(method, "/api/approvals", json={"vector": 1})
        _error(response, 405, "MethodNotAllowed")
        assert response.headers["allow"] == "GET, POST"
    head = served.client.head("/api/models")
    assert (head.status_code, head.headers["allow"], head.content) == (405, "GET", b"")
    assert served.reg.list_aliases() == served.reg.list_aliases(model="tiny")  # nothing moved


def test_openapi_and_docs(served: Served) -> None:
    spec = served.get("/openapi.json")
    paths = spec["paths"]
    for path in (
        "/api/models",
        "/api/models/{ref}",
        "/api/concepts/{ref}",
        "/api/vectors",
        "/api/vectors/{vector_id}/download",
        "/api/maps",
        "/api/evaluations",
        "/api/plan",
        "/api/aliases",
        "/api/aliases/{concept}/history",
        "/api/approvals",
        "/api/deprecations",
        "/api/policies",
        "/api/audit",
        "/api/lineage",
        "/api/registry",
    ):
        # Reads are GETs; the only POSTs are the token-guarded writes (tests/test_serve_writes.py).
        writes = {"/api/aliases", "/api/approvals"}
        assert set(paths[path]) == ({"get", "post"} if path in writes else {"get"}), path
    for path in ("/api/rejections", "/api/promotions"):
        assert set(paths[path]) == {"post"}, path
    assert all(op.get("summary") for ops in paths.values() for op in ops.values())
    plan_schema = paths["/api/plan"]["get"]["responses"]["200"]["content"]["application/json"]
    assert plan_schema["schema"]["$ref"].endswith("/TransplantPlan")
    docs = served.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    # the catalogue's pages link the docs and the spec from their nav bar
    home = served.client.get("/")
    assert home.status_code == 200
    assert 'href="/docs"' in home.text
    assert 'href="/openapi.json"' in home.text
    assert not any(path.startswith(("/models", "/concepts", "/actions")) for path in paths)


# -- other servers: an S3 store, several workers, a database that goes away ----------------


def test_an_s3_store_serves_downloads(
    moto_server: MotoServer, tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in moto_server.environment().items():
        monkeypatch.setenv(key, value)
    db = sqlite_url(tmp_path, sqlite_template)
    store = f"s3://crx-serve-{uuid.uuid4().hex[:12]}/store"
    with Registry(db, store) as reg:
        reg.init()
        facts = populate(reg, tmp_path)
        expected = reg.load_vector(facts["v1"])
    env = server_env(tmp_path / "home", moto_server.environment())
    process, client, log = start_server(db, store, tmp_path, env)
    server = Served(process, client, Registry(db, store), db, store, log, facts)
    try:
        assert server.get("/api/registry")["store"] == store
        response = client.get(f"/api/vectors/{facts['v1']}/download")
        assert response.status_code == 200, response.text
        from safetensors.numpy import load

        np.testing.assert_array_equal(load(response.content)["vector"], expected)
        assert server.get("/api/vectors") == dumped(server.reg.list_vectors())
    finally:
        server.stop()


def test_two_workers_serve_the_same_registry(tmp_path: Path, sqlite_template: Path) -> None:
    db = sqlite_url(tmp_path, sqlite_template)
    store = str(tmp_path / "store")
    with Registry(db, store) as reg:
        reg.init()
        facts = populate(reg, tmp_path)
        models = dumped(reg.list_models())
    env = server_env(tmp_path / "home")
    process, client, log = start_server(db, store, tmp_path, env, "--workers", "2")
    server = Served(process, client, Registry(db, store), db, store, log, facts)
    try:
        for _ in range(10):
            assert server.get("/api/models") == models
        assert client.post("/api/models").status_code == 405
    finally:
        text = server.stop()
    # two worker processes started (each logs its pid), both on the registry given
    assert text.count("Started server process") == 2, text
    assert "Traceback" not in text


class _ProtoZeroConfig(uvicorn.Config):
    """A config that binds as uvicorn releases before the fix of its issue #3149 did: a real
    TCP socket opened with ``proto=0``, the case crx serve's re-wrap is for."""

    def bind_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.set_inheritable(True)
        return sock


@pytest.mark.parametrize("config_type", [uvicorn.Config, _ProtoZeroConfig])
def test_the_workers_socket_turns_nagle_off_for_each_connection(
    config_type: type[uvicorn.Config],
) -> None:
    """uvicorn's socket for ``--workers N`` left Nagle on before its issue #3149 was fixed
    (``proto=0``): each keep-alive response then waited ~40 ms for the client's delayed ACK.
    Whichever uvicorn is installed, the socket crx serve hands its workers must give every
    accepted connection ``TCP_NODELAY``, as asyncio sets it on an ``IPPROTO_TCP`` socket."""
    import asyncio

    from crx.cli.cmd_serve import listening_socket

    config = config_type("crx.cli.web.app:from_environment", host="127.0.0.1", port=0)
    if config_type is _ProtoZeroConfig:
        with config.bind_socket() as probe:
            assert probe.proto == 0  # the case the fix is for
    sock = listening_socket(config)
    assert sock.proto == socket.IPPROTO_TCP
    assert sock.get_inheritable()

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Report(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted = transport.get_extra_info("socket")
                seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Report, sock=sock)
        async with server:
            _reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0


def test_a_database_that_goes_away_is_a_503(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    db = postgres_url(postgres_server)
    store = str(tmp_path / "store")
    with Registry(db, store) as reg:
        reg.register_model("tiny", str(second_model_dir(tmp_path)))
    process, client, log = start_server(db, store, tmp_path, server_env(tmp_path / "home"))
    server = Served(process, client, Registry(db, store), db, store, log, {})
    try:
        assert [m["name"] for m in server.get("/api/models")["items"]] == ["tiny"]
        name = db.rsplit("/", 1)[1]
        postgres_server.execute(f"DROP DATABASE {name} WITH (FORCE)")
        message = _error(client.get("/api/models"), 503, "DatabaseUnavailable")
        assert ":***@" in message
        assert SUPERUSER_PASSWORD not in message
    finally:
        text = server.stop()
    assert SUPERUSER_PASSWORD not in text
    assert "Traceback" not in text


def test_serve_refuses_a_registry_it_cannot_read(tmp_path: Path) -> None:
    closed = f"postgresql://crx:s3cret-pw@127.0.0.1:{free_port()}/crx"
    result = CliRunner().invoke(cli, ["--db", closed, "serve", "--port", str(free_port())])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot open the database postgresql")
    assert "s3cret-pw" not in result.output


# -- statuses no read can cause, on the same app in-process ------------------------------

REFUSALS: list[tuple[crx_errors.CrxError, int]] = [
    (crx_errors.AliasConflict("joy@prod", "tiny", "3", "4"), 409),
    (crx_errors.NotPermitted("alice", "approve"), 403),
    (crx_errors.ProtectedAlias("joy@prod", "tiny", "moves only by promotion"), 403),
    (crx_errors.PromotionRefused("joy@2", ["no approval"]), 403),
    (crx_errors.DatabaseRefused("postgresql://u:***@h/db", "permission denied"), 403),
    (crx_errors.DatabaseUnavailable("postgresql://u:***@h/db", "connection refused"), 503),
    (crx_errors.StoreUnavailable("s3://bucket", "EndpointConnectionError"), 503),
    (crx_errors.SchemaOutOfDate("sqlite:///r.db", "0002", "0003"), 503),
    (crx_errors.AlreadyExists("model tiny"), 409),
    (crx_errors.DeprecatedObject("joy@1", "old", "aliased"), 409),
    (crx_errors.InvalidInput("bad"), 400),
    (crx_errors.TensorShapeError("vector", (1,), (4, 32)), 400),
    (crx_errors.NoMapBetween("a", "b"), 404),
]


def test_each_error_class_has_its_status(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from crx.cli.web.app import create_app

    app = create_app(registry)

    def raiser(number: int) -> None:
        if number == len(REFUSALS):
            raise RuntimeError(f"a bug near {SUPERUSER_PASSWORD}")
        raise REFUSALS[number][0]

    app.add_api_route("/api/raise/{number}", raiser, summary="test only")
    with TestClient(app, raise_server_exceptions=False) as client:
        for number, (exc, status) in enumerate(REFUSALS):
            message = _error(client.get(f"/api/raise/{number}"), status, type(exc).__name__)
            assert message == str(exc)
        bug = client.get(f"/api/raise/{len(REFUSALS)}")
        _error(bug, 500, "InternalError")
        assert SUPERUSER_PASSWORD not in bug.text
    logged = [r for r in caplog.records if r.name == "crx.serve"]
    assert [r.getMessage() for r in logged] == [
        f"GET /api/raise/{len(REFUSALS)} failed: RuntimeError"
    ]
    assert all(r.exc_info is None for r in caplog.records)
