"""``crx diff`` / ``crx apply`` on tiny random-weight models: classification, one transaction,
idempotence, saved diffs refused when stale, removals only with --prune.

The models are the saved tiny Llama (4 x 32) and GPT-2 (3 x 48) of `tests.tiny_models`; the
registry is a real SQLite file or PostgreSQL server, with a local store or an S3 bucket (moto's
server on loopback); every compute step runs for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from crx.cli.main import cli
from crx.registry import Registry
from crx.registry.declare import load_specs
from crx.registry.declare.apply import apply
from crx.registry.declare.reconcile import diff
from crx.registry.errors import InvalidInput
from tests.databases import postgres_url
from tests.servers import MotoServer, PostgresServer
from tests.tiny_models import PAIRS


def _counts(r: Registry) -> dict[str, int]:
    return {
        "models": len(r.list_models(limit=0).items),
        "concepts": len(r.list_concepts(limit=0).items),
        "vectors": len(r.list_vectors(limit=0).items),
        "maps": len(r.list_maps(limit=0).items),
        "evaluations": len(r.list_evaluations(limit=0).items),
        "events": len(r.audit_events(limit=0).items),
    }


def _write_pairs(folder: Path, pairs: list[tuple[str, str]]) -> Path:
    path = folder / "joy.json"
    path.write_text(json.dumps([{"positive": p, "negative": n} for p, n in pairs]))
    return path


def _spec(folder: Path, dirs: dict[str, Path], corpus: Path, *, family: str = "tiny",
          with_joy: bool = True, evaluation: bool = True) -> Path:  # fmt: skip
    """A spec folder: two models, the concept joy, a map, a transplant and an evaluation."""
    folder.mkdir(exist_ok=True)
    _write_pairs(folder, [(p.positive, p.negative) for p in PAIRS])
    models = f"""
models:
  - name: src
    path: {dirs["llama"]}
    family: {family}
    role: aligned
  - name: tgt
    path: {dirs["gpt2"]}
    role: base
"""
    rest = f"""
concepts:
  - name: joy
    pairs: joy.json
    template: "Scenario: {{text}}\\nThe feeling is"
    extraction: {{batch_size: 4}}
    extract_on: [src]
maps:
  - source: src
    target: tgt
    corpus: {corpus}
    pairs: auto
transplants:
  - concept: joy
    source: src
    target: tgt
"""
    if evaluation:
        rest += """
evaluations:
  - concept: joy
    model: tgt
    emotion: happiness
    alphas: [0.1, 0.2]
"""
    (folder / "models.yaml").write_text(models)
    (folder / "catalog.yaml").write_text(rest if with_joy else "")
    return folder


@pytest.fixture
def specs(model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path) -> Path:
    """The default spec folder of `_spec`: two models, joy, a map, a transplant, an evaluation."""
    return _spec(tmp_path / "specs", model_dirs, corpus_file)


def test_apply_computes_everything_once_then_nothing(
    registry: Registry,
    corpus_file: Path,
    specs: Path,
) -> None:
    reg = registry  # SQLite and PostgreSQL
    loaded = load_specs(specs)
    planned = diff(reg.catalog, loaded).changes
    assert [(c.key, c.action) for c in planned] == [
        ("model:src", "create"),
        ("model:tgt", "create"),
        ("concept:joy", "create"),
        ("extraction:joy:src", "create"),
        (f"map:src->tgt:ridge:auto:{corpus_file}", "create"),
        ("transplant:joy:src->tgt", "create"),
        ("evaluation:joy:tgt:emotion:transplanted:happiness", "create"),
    ]
    assert planned[3].compute == ["extract joy on src (mean, last token)"]
    assert planned[0].where == f"{specs / 'models.yaml'}:3"
    assert _counts(reg)["models"] == 0  # a diff writes nothing

    report = apply(reg.workspace, loaded)
    assert report.applied
    after = _counts(reg)
    # 2 models, 1 concept, the extracted + the transplanted vector, 3 maps (auto: one per
    # target layer), 2 alphas x 2 metrics.
    assert {k: after[k] for k in ("models", "concepts", "vectors", "maps", "evaluations")} == {
        "models": 2, "concepts": 1, "vectors": 2, "maps": 3, "evaluations": 4,
    }  # fmt: skip
    mapped = next(v for v in reg.list_vectors(limit=0).items if v.origin == "mapped")
    source = next(v for v in reg.list_vectors(limit=0).items if v.origin == "extracted")
    assert mapped.source_vector_id == source.id
    assert sorted(reg.get_map(m).target_layer for m in mapped.map_ids or []) == [0, 1, 2]
    # The transplanted rows are W · v_source at each layer, with the maps registered.
    vs, vt = reg.load_vector(source.id), reg.load_vector(mapped.id)
    for map_id in mapped.map_ids or []:
        m = reg.get_map(map_id)
        w, _ = reg.load_map(map_id)
        np.testing.assert_allclose(vt[m.target_layer], w @ vs[m.source_layer], rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
    evaluated = reg.list_evaluations(vector_id=mapped.id, limit=0).items
    assert sorted({e.alpha for e in evaluated}) == [0.1, 0.2]
    assert {e.layers[0] for e in evaluated if e.layers} == {2}  # int(0.75 * 3)
    # All rows of the apply are one transaction: consecutive audit events, one apply.
    assert reg.get_model("src").family == "tiny"

    again = diff(reg.catalog, load_specs(specs)).changes
    assert {c.action for c in again} == {"unchanged"}
    second = apply(reg.workspace, load_specs(specs))
    assert not second.applied
    assert _counts(reg) == after


def test_update_new_version_and_field_changes(
    reg: Registry,
    model_dirs: dict[str, Path],
    corpus_file: Path,
    tmp_path: Path,
) -> None:
    specs = _spec(tmp_path / "specs", model_dirs, corpus_file, evaluation=False)
    apply(reg.workspace, load_specs(specs))
    _spec(tmp_path / "specs", model_dirs, corpus_file, family="small", evaluation=False)
    _write_pairs(specs, [(p.positive, p.negative) for p in PAIRS[:4]])
    changes = {c.key: c for c in diff(reg.catalog, load_specs(specs)).changes}
    model = changes["model:src"]
    assert model.action == "update"
    assert [(f.field, f.old, f.new) for f in model.changes] == [("family", "tiny", "small")]
    concept = changes["concept:joy"]
    assert (concept.action, concept.note) == ("update", "new version 2")
    assert {f.field: (f.old, f.new) for f in concept.changes}["n_pairs"] == (6, 4)
    # The new version needs its own extraction and transplant; the map is unchanged.
    assert changes["extraction:joy:src"].action == "create"
    assert changes["transplant:joy:src->tgt"].action == "create"
    assert changes[f"map:src->tgt:ridge:auto:{corpus_file}"].action == "unchanged"
    apply(reg.workspace, load_specs(specs))
    assert reg.get_concept("joy").version == 2
    assert reg.get_model("src").family == "small"
    assert {c.action for c in diff(reg.catalog, load_specs(specs)).changes} == {"unchanged"}
    # Marking the version for use is a field change of the concept, and apply makes it.
    catalog = specs / "catalog.yaml"
    line = "    extract_on: [src]"
    marked = catalog.read_text().replace(line, line + "\n    use: true")
    catalog.write_text(marked)
    joy = {c.key: c for c in diff(reg.catalog, load_specs(specs)).changes}["concept:joy"]
    assert (joy.action, [(f.field, f.old, f.new) for f in joy.changes]) == (
        "update",
        [("use", False, True)],
    )
    apply(reg.workspace, load_specs(specs))
    assert reg.get_concept("joy@2").tags == {"use": True}
    assert [c.concept for c in reg.plan("tgt").concepts] == ["joy@2"]
    assert {c.action for c in diff(reg.catalog, load_specs(specs)).changes} == {"unchanged"}


def test_a_failed_compute_writes_nothing(
    reg: Registry,
    model_dirs: dict[str, Path],
    corpus_file: Path,
    tmp_path: Path,
) -> None:
    specs = _spec(tmp_path / "specs", model_dirs, corpus_file, evaluation=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,truthfulqa,file\n1,2,3,4\n")
    (specs / "eval.yaml").write_text(
        f"evaluations:\n  - model: tgt\n    task: truthfulqa\n    data: {bad}\n"
    )
    before = _counts(reg)
    with pytest.raises(InvalidInput):
        apply(reg.workspace, load_specs(specs))
    # Models, concept, vector, maps were all computed before the evaluation failed: none landed.
    assert _counts(reg) == before


def test_saved_diff_applies_only_if_nothing_moved(
    reg: Registry,
    model_dirs: dict[str, Path],
    corpus_file: Path,
    tmp_path: Path,
) -> None:
    specs = _spec(tmp_path / "specs", model_dirs, corpus_file, with_joy=False)
    runner = CliRunner()
    base = ["--db", reg.location.database_url, "--store", reg.location.store_url]
    saved = tmp_path / "plan.json"
    result = runner.invoke(cli, [*base, "diff", str(specs), "-o", str(saved)])
    assert result.exit_code == 0, result.output
    assert "+ create    model:src" in result.output
    assert "2 to create, 0 to update, 0 unchanged, 0 not in the specs" in result.output
    # Someone registers a model in between: the saved diff is refused and nothing is written.
    reg.register_model("other", str(model_dirs["twin"]))
    before = _counts(reg)
    refused = runner.invoke(cli, [*base, "apply", str(saved)])
    assert refused.exit_code == 1
    assert refused.output.startswith("Error: the registry changed since this diff was made")
    assert _counts(reg) == before
    # A fresh diff applies; then editing a spec file makes that saved diff stale too.
    again = [*base, "diff", str(specs), "-o", str(saved), "--force"]
    assert runner.invoke(cli, again).exit_code == 0
    ok = runner.invoke(cli, [*base, "apply", str(saved)])
    assert ok.exit_code == 0, ok.output
    assert "rows written in one transaction" in ok.output
    assert runner.invoke(cli, again).exit_code == 0
    (specs / "models.yaml").write_text((specs / "models.yaml").read_text() + "\n# edited\n")
    stale = runner.invoke(cli, [*base, "apply", str(saved)])
    assert stale.exit_code == 1
    assert "changed since this diff was made" in stale.output
    nothing = runner.invoke(cli, [*base, "apply", str(specs)])
    assert "nothing to do" in nothing.output


def test_removals_are_shown_and_need_prune(
    registry: Registry,
    model_dirs: dict[str, Path],
    specs: Path,
) -> None:
    reg = registry  # SQLite and PostgreSQL
    apply(reg.workspace, load_specs(specs))
    (specs / "catalog.yaml").write_text("")  # joy, its map, transplant and evaluation go
    changes = {c.key: c for c in diff(reg.catalog, load_specs(specs)).changes}
    removal = changes["concept:joy"]
    assert removal.action == "remove"
    assert removal.note == (
        "not in the specs; kept unless --prune (would delete 2 vectors, 4 evaluations)"
    )
    kept = apply(reg.workspace, load_specs(specs))
    assert not kept.applied
    assert _counts(reg)["vectors"] == 2
    vectors = reg.list_vectors(concept="joy", limit=0).items
    v_ids, v_oids = [v.id for v in vectors], {v.oid for v in vectors}
    pruned = apply(reg.workspace, load_specs(specs), prune=True)
    assert pruned.applied
    counts = _counts(reg)
    assert (counts["concepts"], counts["vectors"], counts["evaluations"]) == (0, 0, 0)
    assert counts["maps"] == 3  # maps belong to the models, which stay
    deleted = [e for e in reg.audit_events(limit=0).items if e.action == "delete"]
    assert [(e.object_kind, e.object_ref) for e in deleted] == [("concept", "joy")]
    old = deleted[0].old or {}
    assert {k: old[k] for k in ("versions", "vectors", "evaluations")} == {
        "versions": 1,
        "vectors": 2,
        "evaluations": 4,
    }
    # Which objects went, with their oids, so the blobs can still be traced.
    assert [v["id"] for v in old["deleted"]["vectors"]] == sorted(v_ids)
    assert {v["oid"] for v in old["deleted"]["vectors"]} == v_oids
    assert len(old["deleted"]["evaluations"]) == 4
    assert [v["version"] for v in old["deleted"]["versions"]] == [1]
    # Pruning a model takes its maps too.
    (specs / "models.yaml").write_text(f"models:\n  - name: src\n    path: {model_dirs['llama']}\n")
    apply(reg.workspace, load_specs(specs), prune=True)
    assert [m.name for m in reg.list_models(limit=0).items] == ["src"]
    assert _counts(reg)["maps"] == 0


def test_malformed_spec_and_unknown_model_are_clear_errors(
    reg: Registry,
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    base = ["--db", reg.location.database_url, "--store", reg.location.store_url]
    spec = tmp_path / "bad.yaml"
    spec.write_text("models:\n  - name: x\n    path: /nowhere\n    rolee: base\n")
    result = runner.invoke(cli, [*base, "diff", str(spec)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {spec}:4: models[0]: unknown key 'rolee'")
    spec.write_text("maps:\n  - source: a\n    target: b\n")
    result = runner.invoke(cli, [*base, "apply", str(spec)])
    assert result.exit_code == 1
    assert f"{spec}:2: model 'a' is neither in the specs nor registered" in result.output
    assert _counts(reg)["events"] == 0


def _kill_apply_during_compute(target: Registry, specs: Path) -> None:
    """Run `crx apply` on ``target`` in a subprocess; SIGKILL it once compute has started."""
    env = {**os.environ, "CRX_DATABASE_URL": target.location.database_url,
           "CRX_STORE_URL": target.location.store_url}  # fmt: skip
    crx = str(Path(sys.executable).with_name("crx"))
    process = subprocess.Popen([crx, "apply", str(specs)], env=env, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    # Wait until compute has started (its first stage line), then kill it outright.
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "extract joy on src" in line or "states" in line, line
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_apply_killed_during_compute_leaves_the_registry_as_it_was(
    registry: Registry,
    specs: Path,
) -> None:
    reg = registry  # SQLite and PostgreSQL
    before = _counts(reg)
    _kill_apply_during_compute(reg, specs)
    assert _counts(reg) == before
    # Re-running completes it.
    assert apply(reg.workspace, load_specs(specs)).applied
    assert _counts(reg)["vectors"] == 2


@pytest.fixture
def team_registry(postgres_server: PostgresServer, s3_env: MotoServer) -> Iterator[Registry]:
    """What a team runs: PostgreSQL for the rows, an S3 bucket (moto on loopback) for blobs."""
    r = Registry(postgres_url(postgres_server), f"s3://crx-team-{uuid.uuid4().hex[:16]}/store")
    r.init()
    yield r
    r.close()


def test_apply_on_postgres_and_s3_survives_a_kill_and_stores_every_blob(
    team_registry: Registry,
    specs: Path,
) -> None:
    reg = team_registry
    before = _counts(reg)
    _kill_apply_during_compute(reg, specs)
    assert _counts(reg) == before
    report = apply(reg.workspace, load_specs(specs))
    assert report.applied
    after = _counts(reg)
    assert (after["vectors"], after["maps"], after["evaluations"]) == (2, 3, 4)
    # Every row's blob is in the bucket and hashes to its oid.
    check = reg.verify_store()
    assert check.problems == []
    assert check.ok == check.checked >= 2 + 3 + 1  # vectors, maps, the pairs file at least
    assert not apply(reg.workspace, load_specs(specs)).applied
    assert _counts(reg) == after


def test_load_plan_steers_every_concept_at_its_layer_and_alpha(
    reg: Registry,
    model_dirs: dict[str, Path],
    corpus_file: Path,
    tmp_path: Path,
) -> None:
    from crx.registry.engine.steer import residual_norm
    from crx.registry.workflows.corpus import load_corpus
    from tests.tiny_models import no_hooks, single_pass_blocks

    specs = _spec(tmp_path / "specs", model_dirs, corpus_file, evaluation=False)
    (specs / "more.yaml").write_text(
        "concepts:\n  - name: calm\n    pairs: joy.json\n    template: 'Calm: {text}'\n"
        "    extract_on: [src]\n"
        "transplants:\n  - {concept: calm, source: src, target: tgt}\n"
    )
    apply(reg.workspace, load_specs(specs))
    plan = reg.plan("tgt", ["joy", "calm"])
    routes = [c.chosen for c in plan.concepts]
    assert all(r is not None and r.kind == "transplanted" for r in routes)
    tgt = reg.load_model("tgt")
    text = "I feel wonderful today"
    base = single_pass_blocks(tgt, text)
    with reg.load_plan(tgt, plan):
        assert not no_hooks(tgt)
        steered = single_pass_blocks(tgt, text)
    assert no_hooks(tgt)
    # Both concepts steer block 2 (depth 0.75 of 3) with α 0.1 of its residual norm each; the
    # first block that changes is 2, by exactly the sum of the two normalized additions.
    lines, _ = load_corpus(None)
    norm = residual_norm(tgt, lines[:64], 2)
    expected = np.zeros(tgt.d_model)
    for route in routes:
        assert route is not None
        assert (route.layer, route.alpha.alpha, route.alpha.normalize) == (2, 0.1, True)
        row = reg.load_vector(route.vector_id or 0)[2].astype(np.float64)
        expected += 0.1 * norm * row / np.linalg.norm(row)
    for layer in (0, 1):
        np.testing.assert_allclose(steered[layer].numpy(), base[layer].numpy(), atol=1e-6)
    delta = (steered[2] - base[2]).double().numpy()
    np.testing.assert_allclose(delta, np.broadcast_to(expected, delta.shape), rtol=1e-4, atol=1e-4)
    with (
        pytest.raises(InvalidInput, match="the plan is for tgt, not src"),
        reg.load_plan(reg.load_model("src"), plan),
    ):
        pass


@pytest.mark.slow
def test_apply_killed_at_any_moment_is_all_or_nothing(
    reg: Registry,
    tmp_path: Path,
    specs: Path,
) -> None:
    """SIGKILL at spread-out moments of a whole `crx apply` (start-up, compute, the write):
    every time the registry is exactly as before or exactly as after, and a re-run finishes."""
    import shutil

    empty = Path(reg.location.database_url.removeprefix("sqlite:///"))
    crx = str(Path(sys.executable).with_name("crx"))

    def run(db: Path, kill_after: float | None) -> Registry:
        env = {**os.environ, "CRX_DATABASE_URL": f"sqlite:///{db}",
               "CRX_STORE_URL": reg.location.store_url}  # fmt: skip
        quiet = subprocess.DEVNULL
        process = subprocess.Popen([crx, "apply", str(specs)], env=env, stdout=quiet, stderr=quiet)
        if kill_after is None:
            assert process.wait() == 0
        else:
            try:
                process.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
        return Registry(f"sqlite:///{db}", reg.location.store_url)

    before = _counts(reg)
    full_db = tmp_path / "full.db"
    shutil.copy(empty, full_db)
    start = time.perf_counter()
    finished = run(full_db, None)
    duration = time.perf_counter() - start
    after = _counts(finished)
    finished.close()
    assert after["vectors"] == 2
    outcomes = []
    for i, fraction in enumerate((0.3, 0.6, 0.8, 0.9, 0.97)):
        db = tmp_path / f"killed-{i}.db"
        shutil.copy(empty, db)
        killed = run(db, duration * fraction)
        state = _counts(killed)
        assert state in (before, after), (fraction, state)
        outcomes.append(state == after)
        killed.close()
        if state == before:  # re-running completes it
            again = run(db, None)
            assert _counts(again) == after
            again.close()
    # The early kills landed before the write (the late ones may have finished).
    assert outcomes[0] is False
