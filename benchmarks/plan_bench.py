"""Resolver and diff latency at scale: ``crx plan --target`` and ``crx diff`` of unchanged specs.

Catalogue (SQLite file, bulk-loaded with the rows `catalog_bench` generates): 1,000 models,
10,000 concepts (one version each), 100,000 extracted vectors (ten models per concept),
50,000 affine maps (each model has maps from two others at 25 layers, so chains of maps exist)
and 40,000 evaluation rows (two α x two metrics for 10,000 vectors). Then:

* ``Registry.plan(target, [3 concepts])`` on random targets (in-process; the work of
  ``crx plan``), and the same through the CLI as a subprocess (Python start-up included).
  Random concepts mostly have no route into a random target (a concept has vectors on 10
  models, a target receives chains of maps from 6 models), so the same is also timed with 3
  concepts drawn to have one: a vector on a model whose maps reach the target in 1-3 hops;
* ``Registry.plan(target)`` for every concept with a vector (10,000 concepts), a few runs;
* ``crx diff`` of a spec folder declaring 1,000 objects that are all unchanged (500 of the
  bulk models and 500 concepts registered from real pairs files), in-process and CLI;
* governance (issue #12): the catalogue also gets a ``prod`` alias on every fifth vector (each
  with an approval by another actor, 20,000 aliases), a ``staging`` alias on every tenth, a
  policy for ``prod``, and 1,655 deprecations (1,100 vectors, 100 of them targets of ``prod``;
  500 maps; 50 concept versions; 5 models). ``Registry.plan`` is timed with alias resolution
  and deprecation filtering and without (the planner's two governance reads replaced by
  "nothing aliased, nothing deprecated", so it plans as before governance), same arguments,
  alternating run by run: 3 concepts that have ``prod`` on the target, 3 routed concepts,
  3 random concepts, and the default plan of every concept.

    .venv/bin/python benchmarks/plan_bench.py --out benchmarks/results/plan.json
    .venv/bin/python benchmarks/plan_bench.py --quick
    .venv/bin/python benchmarks/plan_bench.py --plan-only \\
        --out benchmarks/results/plan_governance.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from catalog_bench import CRX, bulk_load, chunks, git_commit, machine, summary  # noqa: E402
from sqlalchemy import Engine, func, select  # noqa: E402

from crx import Registry  # noqa: E402
from crx.registry.db.tables import (  # noqa: E402
    SqlAffineMap,
    SqlAlias,
    SqlApproval,
    SqlConceptVersion,
    SqlDeprecation,
    SqlEvaluation,
    SqlPolicy,
    SqlVector,
)
from crx.registry.declare import load_specs  # noqa: E402
from crx.registry.declare.reconcile import diff  # noqa: E402
from crx.registry.resolve.view import CatalogView, Deprecations  # noqa: E402

SCALES = {
    "full": {"models": 1_000, "concepts": 10_000, "versions": 1, "vectors": 100_000,
             "maps": 50_000, "evaluated_vectors": 10_000, "spec_models": 500,
             "spec_concepts": 500},
    "quick": {"models": 100, "concepts": 1_000, "versions": 1, "vectors": 10_000,
              "maps": 5_000, "evaluated_vectors": 1_000, "spec_models": 50,
              "spec_concepts": 50},
}  # fmt: skip
RUNS = {"full": {"api": 200, "cli": 20, "all": 3, "diff": 10, "cli_diff": 5},
        "quick": {"api": 30, "cli": 5, "all": 2, "diff": 3, "cli_diff": 2}}  # fmt: skip


def evaluation_rows(scale: dict[str, int], stamp: datetime) -> Iterator[dict[str, Any]]:
    """Two α x two metrics for the first vectors, recorded on the vector's own model."""
    n_versions = scale["concepts"] * scale["versions"]
    per_version = scale["vectors"] // n_versions
    row = 0
    rng = random.Random(3)
    for i in range(scale["evaluated_vectors"]):
        model_id = ((i // n_versions) * (scale["models"] // per_version) + i) % scale["models"] + 1
        for alpha in (0.1, 0.2):
            for metric in ("token_accuracy", "logit_accuracy"):
                row += 1
                yield {
                    "id": row, "vector_id": i + 1, "model_id": model_id, "task": "emotion",
                    "dataset_oid": None, "layers": [19], "alpha": alpha, "metric": metric,
                    "value": round(rng.uniform(0, 1), 3), "n": 100,
                    "settings": {"normalize": True}, "created_at": stamp,
                }  # fmt: skip


def load_governance(engine: Engine, stamp: datetime) -> tuple[dict[str, int], dict[int, list[str]]]:
    """Aliases (with their approvals), a policy and deprecations, inserted as the owner would
    have made them (the database's triggers check every alias row and write its history).

    Returns the row counts and, per model, the concepts that have ``prod`` there."""
    counts: dict[str, int] = {}
    prod_on: dict[int, list[str]] = {}
    with engine.begin() as connection:
        connection.execute(
            SqlPolicy.__table__.insert(),
            [{"name": "bench-prod", "concept": None, "model": None, "alias": "prod",
              "rules": {"approvals": 1, "evidence": []}, "description": "benchmark policy",
              "actor": "bench-owner", "at": stamp}],
        )  # fmt: skip
        vectors = select(
            SqlVector.id,
            SqlVector.model_id,
            SqlVector.concept_version_id,
            SqlVector.oid,
            SqlConceptVersion.concept_id,
        ).join(SqlConceptVersion, SqlVector.concept_version_id == SqlConceptVersion.id)
        for alias, (every, rest) in {"prod": (5, 0), "staging": (10, 3)}.items():
            rows = connection.execute(vectors.where(SqlVector.id % every == rest)).all()
            if alias == "prod":
                approvals = [
                    {"vector_id": vid, "vector_oid": oid, "model_id": model, "alias": alias,
                     "decision": "approve", "actor": "bench-approver", "label": None,
                     "reason": None, "at": stamp}
                    for vid, model, _, oid, _ in rows
                ]  # fmt: skip
                for batch in chunks(iter(approvals)):
                    connection.execute(SqlApproval.__table__.insert(), batch)
                counts["approvals"] = len(approvals)
                for _, model, _, _, concept in rows:
                    prod_on.setdefault(model, []).append(f"concept-{concept:04d}")
            aliases = (
                {"concept_id": concept, "model_id": model, "name": alias,
                 "concept_version_id": version, "vector_id": vid, "revision": 1,
                 "action": "promote" if alias == "prod" else "set", "actor": "bench-owner",
                 "label": None, "reason": None, "updated_at": stamp}
                for vid, model, version, _, concept in rows
            )  # fmt: skip
            for batch in chunks(aliases):
                connection.execute(SqlAlias.__table__.insert(), batch)
            counts[f"aliases_{alias}"] = len(rows)
        # Deprecated after the aliases moved (the database refuses an alias to one): vectors
        # (every 1,000th is a prod target), maps, concept versions and a few models.
        n_vectors = connection.scalar(select(func.max(SqlVector.id)))
        n_maps = connection.scalar(select(func.max(SqlAffineMap.id)))
        n_versions = connection.scalar(select(func.max(SqlConceptVersion.id)))
        kinds = {
            "vector": [i for i in range(1, n_vectors + 1) if i % 100 == 7 or i % 1000 == 0],
            "map": [i for i in range(1, n_maps + 1) if i % 100 == 11],
            "concept_version": [i for i in range(1, n_versions + 1) if i % 200 == 13],
            "model": [97, 297, 497, 697, 897],
        }
        deprecations = [
            {"object_kind": kind, "object_id": i, "object_ref": f"{kind} {i}",
             "actor": "bench-owner", "label": None, "reason": "benchmark", "at": stamp}
            for kind, ids in kinds.items() for i in ids
        ]  # fmt: skip
        for batch in chunks(iter(deprecations)):
            connection.execute(SqlDeprecation.__table__.insert(), batch)
        counts["deprecations"] = len(deprecations)
        for kind, ids in kinds.items():
            counts[f"deprecated_{kind}"] = len(ids)
    with engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
    return counts, prod_on


@dataclass
class Built:
    """What `build_catalogue` loaded: row counts and times, and per model (by id) the
    concepts that have ``prod`` there."""

    load: dict[str, Any]
    governance: dict[str, int]
    governance_seconds: float
    prod_on: dict[int, list[str]]


def build_catalogue(reg: Registry, scale: dict[str, int]) -> Built:
    """The benchmark catalogue in ``reg``'s (new, empty) database: the schema, `catalog_bench`'s
    bulk rows, the evaluations and the governance rows (`load_governance`)."""
    reg.init()
    print(f"loading {scale} ...", flush=True)
    load = bulk_load(reg.db.sql_engine, scale)
    stamp = datetime.now(UTC)
    with reg.db.sql_engine.begin() as connection:
        for batch in chunks(evaluation_rows(scale, stamp)):
            connection.execute(SqlEvaluation.__table__.insert(), batch)
    print(f"loaded in {load['seconds']} s: {load['rows']}", flush=True)
    started = time.perf_counter()
    governance, prod_on = load_governance(reg.db.sql_engine, stamp)
    governance_seconds = round(time.perf_counter() - started, 1)
    print(f"governance rows in {governance_seconds} s: {governance}", flush=True)
    return Built(load, governance, governance_seconds, prod_on)


def cached_catalogue(label: str, cache: Path) -> tuple[Path, Built]:
    """The catalogue of scale ``label`` as a SQLite file under ``cache``, built once.

    The file's name carries a fingerprint of everything that decides its rows and schema (this
    file, `catalog_bench`, the migrations), so a change to any of them builds a new one. The
    readers of a cached file (``serve_load``) must not write to it.
    """
    digest = hashlib.sha256()
    migrations = sorted((ROOT / "migrations").rglob("*.py"))
    for source in [Path(__file__), ROOT / "benchmarks" / "catalog_bench.py", *migrations]:
        digest.update(source.read_bytes())
    folder = cache / f"plan-catalogue-{label}-{digest.hexdigest()[:12]}"
    facts = folder / "facts.json"
    if facts.exists():
        saved = json.loads(facts.read_text())
        saved["prod_on"] = {int(k): v for k, v in saved["prod_on"].items()}
        return folder / "registry.db", Built(**saved)
    if folder.exists():  # an interrupted build
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    reg = Registry(f"sqlite:///{folder / 'registry.db'}", str(folder / "store"))
    try:
        built = build_catalogue(reg, SCALES[label])
    finally:
        reg.close()
    # Written last: its presence means the build finished.
    facts.write_text(json.dumps(asdict(built)))
    return folder / "registry.db", built


def routed_concepts(rng: random.Random, scale: dict[str, int]) -> tuple[str, list[str]]:
    """A target and three concepts that each have a route into it (see the docstring)."""
    per_class = scale["models"] // (scale["vectors"] // scale["concepts"])
    classes = scale["concepts"] // per_class
    t = rng.randint(1, scale["models"])
    picked = []
    for _ in range(3):
        m = (t - 1 - rng.randint(1, 6)) % scale["models"] + 1  # maps reach t from m
        v = (m - 1) % per_class + 1 + per_class * rng.randrange(classes)
        picked.append(f"concept-{v:04d}")
    return f"model-{t:04d}", picked


@contextmanager
def ungoverned() -> Iterator[None]:
    """The planner without governance: nothing aliased, nothing deprecated (its two reads
    answer empty), so it plans exactly as before aliases and deprecations existed."""
    saved = CatalogView.deprecations, CatalogView.aliases_on
    CatalogView.deprecations = lambda self: Deprecations()  # type: ignore[method-assign]
    CatalogView.aliases_on = lambda self, *args, **kwargs: {}  # type: ignore[method-assign]
    try:
        yield
    finally:
        CatalogView.deprecations, CatalogView.aliases_on = saved  # type: ignore[method-assign]


def compare(reg: Registry, n: int, draw: Callable[[], tuple[str, list[str]]]) -> dict[str, Any]:
    """``Registry.plan`` with and without governance on the same drawn arguments, the order
    alternating run by run (other work on the machine then weighs on both alike)."""
    governed: list[float] = []
    plain: list[float] = []
    for run in range(n):
        target, concepts = draw()
        for with_governance in (True, False) if run % 2 else (False, True):
            with contextlib.nullcontext() if with_governance else ungoverned():
                started = time.perf_counter()
                reg.plan(target, concepts)
                elapsed = time.perf_counter() - started
            (governed if with_governance else plain).append(elapsed)
    with_g, without = summary(governed), summary(plain)
    return {
        "with_governance": with_g,
        "without_governance": without,
        "added_p50_ms": round(with_g["p50_ms"] - without["p50_ms"], 3),
        "added_p95_ms": round(with_g["p95_ms"] - without["p95_ms"], 3),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def governance_sample(reg: Registry, draws: list[tuple[str, list[str]]]) -> dict[str, int]:
    """What the governed planner did on some drawn plans (that the timed work is real)."""
    seen = {"concepts": 0, "alias_used": 0, "alias_not_used": 0, "deprecation_reasons": 0}
    for target, concepts in draws:
        for c in reg.plan(target, concepts).concepts:
            seen["concepts"] += 1
            seen["alias_used"] += c.alias is not None
            seen["alias_not_used"] += any("alias" in r and "not used" in r for r in c.reasons)
            seen["deprecation_reasons"] += sum("deprecated" in r for r in c.reasons)
    return seen


def write_specs(reg: Registry, folder: Path, scale: dict[str, int]) -> int:
    """Spec files for bulk models (as registered) and real concepts; returns the object count."""
    folder.mkdir()
    (folder / "pairs").mkdir()
    models = reg.list_models(limit=scale["spec_models"]).items
    lines = ["models:"]
    for m in models:
        lines += [f"  - name: {m.name}", f"    path: {m.path}", f"    family: {m.family}",
                  f"    role: {m.role}", f"    tags: {json.dumps(m.tags)}"]  # fmt: skip
    (folder / "models.yaml").write_text("\n".join(lines) + "\n")
    lines = ["concepts:"]
    for i in range(scale["spec_concepts"]):
        name = f"spec-concept-{i:04d}"
        pairs = [{"positive": f"good thing {i} {k}", "negative": f"bad thing {i} {k}"}
                 for k in range(8)]  # fmt: skip
        path = folder / "pairs" / f"{name}.json"
        path.write_text(json.dumps(pairs))
        reg.register_concept(name, path)
        lines += [f"  - name: {name}", f"    pairs: pairs/{name}.json"]
    (folder / "concepts.yaml").write_text("\n".join(lines) + "\n")
    return len(models) + scale["spec_concepts"]


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/10 scale, fewer runs")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="only the in-process plan timings (no CLI, no diff): the governance comparison",
    )
    args = parser.parse_args()
    label = "quick" if args.quick else "full"
    scale, runs = SCALES[label], RUNS[label]
    rng = random.Random(7)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="crx-plan-bench-") as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work / 'registry.db'}"
        reg = Registry(url, str(work / "store"))
        built = build_catalogue(reg, scale)
        load, governance, prod_on = built.load, built.governance, built.prod_on
        governance_seconds = built.governance_seconds
        n_objects = 0 if args.plan_only else write_specs(reg, work / "specs", scale)

        def target() -> str:
            return f"model-{rng.randint(1, scale['models']):04d}"

        def concepts() -> list[str]:
            return [f"concept-{rng.randint(1, scale['concepts']):04d}" for _ in range(3)]

        def routed() -> tuple[str, list[str]]:
            return routed_concepts(rng, scale)

        aliased_models = sorted(m for m, names in prod_on.items() if len(names) >= 3)

        def aliased() -> tuple[str, list[str]]:
            """A target and three concepts that have ``prod`` there."""
            m = rng.choice(aliased_models)
            return f"model-{m:04d}", rng.sample(prod_on[m], 3)

        reg.plan(target(), concepts())  # warm: connection, schema check, imports
        gov_runs = runs["api"]
        gov_sample = governance_sample(reg, [aliased() for _ in range(50)])
        gov_report = {
            "rows": governance,
            "seconds": governance_seconds,
            "sample_of_50_aliased_plans": gov_sample,
            "plan_3_aliased_concepts": compare(reg, gov_runs, aliased),
            "plan_3_routed_concepts": compare(reg, gov_runs, routed),
            "plan_3_random_concepts": compare(reg, gov_runs, lambda: (target(), concepts())),
            "plan_every_concept": compare(reg, runs["all"], lambda: (target(), [])),
        }
        print(json.dumps(gov_report, indent=2), flush=True)
        if args.plan_only:
            reg.close()
            report = {
                "benchmark": "plan_bench --plan-only",
                "scale": label,
                "catalogue": {**scale, "load": load},
                "git_commit": git_commit(),
                "machine": machine(),
                "loadavg_start": loadavg_start,
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "governance": gov_report,
                "command": "python benchmarks/plan_bench.py --plan-only"
                + (" --quick" if args.quick else ""),
            }
            text = json.dumps(report, indent=2)
            print(text)
            if args.out:
                args.out.write_text(text + "\n")
            return
        sample = reg.plan("model-0500" if label == "full" else "model-0050", concepts())
        kinds = [c.chosen.kind if c.chosen else c.status for c in sample.concepts]
        api = [timed(lambda: reg.plan(target(), concepts())) for _ in range(runs["api"])]
        routed_kinds: dict[str, int] = {}
        for _ in range(20):
            for c in reg.plan(*routed()).concepts:
                kind = c.chosen.kind if c.chosen else c.status
                routed_kinds[kind] = routed_kinds.get(kind, 0) + 1
        api_routed = [timed(lambda: reg.plan(*routed())) for _ in range(runs["api"])]
        everything = []
        n_planned = 0
        for _ in range(runs["all"]):
            start = time.perf_counter()
            n_planned = len(reg.plan(target()).concepts)
            everything.append(time.perf_counter() - start)
        env = {"CRX_DATABASE_URL": url, "CRX_STORE_URL": str(work / "store"),
               "CRX_HOME": str(work / "home"), "PATH": "/usr/bin:/bin"}  # fmt: skip

        def cli(argv: list[str]) -> float:
            start = time.perf_counter()
            done = subprocess.run([CRX, *argv], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
            return time.perf_counter() - start

        cli(["--version"])
        cli_plan = [
            cli(["plan", "--target", target(), "--json",
                 *[x for c in concepts() for x in ("--concept", c)]])
            for _ in range(runs["cli"])
        ]  # fmt: skip
        cli_routed = []
        for _ in range(runs["cli"]):
            t, cs = routed()
            argv = ["plan", "--target", t, "--json", *[x for c in cs for x in ("--concept", c)]]
            cli_routed.append(cli(argv))
        loaded = load_specs(work / "specs")
        actions = {c.action for c in diff(reg, loaded).changes if c.action != "remove"}
        api_diff = [timed(lambda: diff(reg, load_specs(work / "specs")))
                    for _ in range(runs["diff"])]  # fmt: skip
        cli_diff = [cli(["diff", str(work / "specs")]) for _ in range(runs["cli_diff"])]
        reg.close()
    report = {
        "benchmark": "plan_bench",
        "scale": label,
        "catalogue": {**scale, "load": load},
        "git_commit": git_commit(),
        "machine": machine(),
        "plan_3_concepts_api": summary(api),
        "plan_3_concepts_cli": summary(cli_plan),
        "plan_3_routed_concepts_api": summary(api_routed),
        "plan_3_routed_concepts_cli": summary(cli_routed),
        "routed_sample_chosen_kinds": routed_kinds,
        "plan_every_concept_api": {**summary(everything), "concepts_planned": n_planned},
        "sample_plan_routes": kinds,
        "diff_unchanged_objects": n_objects,
        "diff_actions_seen": sorted(actions),
        "diff_api": summary(api_diff),
        "diff_cli": summary(cli_diff),
        "governance": gov_report,
        "command": "python benchmarks/plan_bench.py" + (" --quick" if args.quick else ""),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
