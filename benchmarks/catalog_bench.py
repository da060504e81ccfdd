"""Catalogue latency at scale: `crx show`, paged `crx list vectors --json`, register a concept.

Builds a catalogue of 1,000 models, 2,500 concepts x 4 versions (10,000 concept versions),
100,000 vectors and 50,000 affine maps (plus one audit event per row) on SQLite (a file in a
temporary folder) and on PostgreSQL (a throwaway server from ``tests.servers``), then times:

* ``crx show model|concept|vector|map REF``: the CLI as a subprocess (wall time, Python start-up
  included) and the same lookup in-process through `Registry`;
* ``crx list vectors --json --limit 100`` at the first page, the middle and the end of the table
  (``--after``): CLI subprocess and in-process;
* registering one concept version (a fresh small pairs list each time): in-process and CLI.

The schema comes from ``Registry.init()`` (alembic). Bulk rows are inserted with SQLAlchemy core
``executemany`` in chunks; their blob oids are fake hex strings (the store is not touched for
bulk rows, and none of the timed reads open a blob). Registering a concept does write its pairs
blob to a real local store. PostgreSQL is loaded with fsync off, then restarted with durable
settings (fsync, synchronous_commit, full_page_writes on) before anything is timed.

    .venv/bin/python benchmarks/catalog_bench.py --out benchmarks/results/catalog.json
    .venv/bin/python benchmarks/catalog_bench.py --quick          # 1/10 scale, fewer runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, func, select, text  # noqa: E402

from crx import Registry  # noqa: E402
from crx.registry.catalog.maps import fit_sha256  # noqa: E402
from crx.registry.db.tables import (  # noqa: E402
    SqlAffineMap,
    SqlAuditEvent,
    SqlConcept,
    SqlConceptVersion,
    SqlModel,
    SqlVector,
)
from crx.registry.pairs import ContrastPair  # noqa: E402
from tests.servers import PostgresServer  # noqa: E402

CRX = str(Path(sys.executable).with_name("crx"))
CHUNK = 5_000
SCALES: dict[str, dict[str, int]] = {
    "full": {"models": 1_000, "concepts": 2_500, "versions": 4, "vectors": 100_000, "maps": 50_000},
    "quick": {"models": 100, "concepts": 250, "versions": 4, "vectors": 10_000, "maps": 5_000},
}
RUNS: dict[str, dict[str, int]] = {
    "full": {"cli_startup": 20, "cli_show": 30, "cli_list": 30, "cli_register": 20,
             "api_show": 200, "api_list": 200, "api_register": 100},
    "quick": {"cli_startup": 5, "cli_show": 8, "cli_list": 8, "cli_register": 5,
              "api_show": 50, "api_list": 50, "api_register": 20},
}  # fmt: skip
Ref = Callable[[random.Random], str]  # draws a REF for `crx show`
Lookup = Callable[[Registry, str], Any]  # the in-process lookup of a REF
SHAPES = [(26, 896), (28, 1024), (32, 2048), (36, 2560)]  # (n_layers, d_model) of bulk models
MAP_LAYERS = 25  # maps per (source, target) pair; every shape has more layers than this


# -- statistics -------------------------------------------------------------------------------


def summary(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "n": len(seconds),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


# -- bulk load ----------------------------------------------------------------------------------


def fake_oid(kind: str, index: int) -> str:
    return hashlib.sha256(f"bench-{kind}-{index}".encode()).hexdigest()


def model_shape(model_id: int) -> tuple[int, int]:
    return SHAPES[model_id % len(SHAPES)]


def chunks(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def model_rows(scale: dict[str, int], stamp: datetime) -> Iterator[dict[str, Any]]:
    for i in range(1, scale["models"] + 1):
        n_layers, d_model = model_shape(i)
        yield {
            "id": i,
            "name": f"model-{i:04d}",
            "path": f"/models/family-{i % 20}/model-{i:04d}",
            "gguf_file": None,
            "revision": None,
            "architecture": "LlamaForCausalLM",
            "model_type": "llama",
            "n_layers": n_layers,
            "d_model": d_model,
            "vocab_size": 49_152,
            "config_sha256": fake_oid("config", i),
            "tokenizer_sha256": fake_oid("tokenizer", i),
            "weights_sha256": None,
            "family": f"family-{i % 20}",
            "role": "aligned" if i % 2 else "base",
            "tags": {"bench": "catalog", "size": str(d_model)},
            "created_at": stamp,
            "updated_at": stamp,
        }


def concept_rows(scale: dict[str, int], stamp: datetime) -> Iterator[dict[str, Any]]:
    for i in range(1, scale["concepts"] + 1):
        yield {
            "id": i,
            "name": f"concept-{i:04d}",
            "description": f"benchmark concept number {i}",
            "created_at": stamp,
            "updated_at": stamp,
        }


def version_rows(scale: dict[str, int], stamp: datetime) -> Iterator[dict[str, Any]]:
    extraction = {"method": "mean", "token": "last", "hook_point": "resid_post"}
    for concept_id in range(1, scale["concepts"] + 1):
        for version in range(1, scale["versions"] + 1):
            row_id = (concept_id - 1) * scale["versions"] + version
            yield {
                "id": row_id,
                "concept_id": concept_id,
                "version": version,
                "pairs_oid": fake_oid("pairs", row_id),
                "n_pairs": 64,
                "template": "{text}",
                "pair_construction": "explicit",
                "extraction": extraction,
                "content_sha256": fake_oid("recipe", row_id),
                "tags": {},
                "created_at": stamp,
            }


def vector_rows(scale: dict[str, int], stamp: datetime) -> Iterator[dict[str, Any]]:
    n_versions = scale["concepts"] * scale["versions"]
    per_version = scale["vectors"] // n_versions  # distinct models per concept version
    rng = random.Random(1)
    for i in range(scale["vectors"]):
        version_id = i % n_versions + 1
        model_id = ((i // n_versions) * (scale["models"] // per_version) + i) % scale["models"] + 1
        n_layers, d_model = model_shape(model_id)
        yield {
            "id": i + 1,
            "concept_version_id": version_id,
            "model_id": model_id,
            "hook_point": "resid_post",
            "token_position": "last",
            "estimator": "mean_diff",
            "oid": fake_oid("vector", i + 1),
            "n_layers": n_layers,
            "d_model": d_model,
            "dtype": "float32",
            "layers": None,
            "layer_norms": [round(rng.uniform(0.5, 40.0), 4) for _ in range(n_layers)],
            "origin": "extracted",
            "lineage_key": "",
            "source_vector_id": None,
            "map_ids": None,
            "settings": {"n_pairs": 64, "batch_size": 16},
            "created_at": stamp,
        }


def map_rows(scale: dict[str, int], stamp: datetime) -> Iterator[dict[str, Any]]:
    solver_settings = {"ridge": 0.01}
    corpus = fake_oid("corpus", 0)
    fit = fit_sha256("lstsq", solver_settings, corpus)
    rng = random.Random(2)
    for i in range(scale["maps"]):
        pair, layer = divmod(i, MAP_LAYERS)
        source = pair % scale["models"]
        target = (source + 1 + pair // scale["models"]) % scale["models"]
        yield {
            "id": i + 1,
            "source_model_id": source + 1,
            "target_model_id": target + 1,
            "source_layer": layer,
            "target_layer": layer,
            "oid": fake_oid("map", i + 1),
            "solver": "lstsq",
            "solver_settings": solver_settings,
            "corpus_oid": corpus,
            "fit_sha256": fit,
            "n_samples": 4096,
            "r2": round(rng.uniform(0.5, 0.99), 4),
            "mse": round(rng.uniform(0.01, 1.0), 4),
            "cosine": round(rng.uniform(0.7, 0.99), 4),
            "metrics": {},
            "created_at": stamp,
        }


def audit_rows(scale: dict[str, int], stamp: datetime) -> Iterator[dict[str, Any]]:
    """One ``register`` event per bulk row, as the API would have written."""
    kinds = [
        ("model", scale["models"]),
        ("concept", scale["concepts"]),
        ("concept_version", scale["concepts"] * scale["versions"]),
        ("vector", scale["vectors"]),
        ("map", scale["maps"]),
    ]
    event_id = 0
    for kind, count in kinds:
        for object_id in range(1, count + 1):
            event_id += 1
            yield {
                "id": event_id,
                "at": stamp,
                "actor": "bench@loader",
                "action": "register",
                "object_kind": kind,
                "object_id": object_id,
                "object_ref": str(object_id),
                "old": None,
                "new": {"bulk": True},
            }


def bulk_load(engine: Engine, scale: dict[str, int]) -> dict[str, Any]:
    stamp = datetime.now(UTC)
    tables = [
        (SqlModel, model_rows),
        (SqlConcept, concept_rows),
        (SqlConceptVersion, version_rows),
        (SqlVector, vector_rows),
        (SqlAffineMap, map_rows),
        (SqlAuditEvent, audit_rows),
    ]
    counts: dict[str, int] = {}
    start = time.perf_counter()
    for table, rows in tables:
        insert = table.__table__.insert()
        with engine.begin() as connection:
            for batch in chunks(rows(scale, stamp)):
                connection.execute(insert, batch)
            counts[table.__tablename__] = connection.scalar(
                select(func.count()).select_from(table.__table__)
            )
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Explicit ids leave the serial sequences at 1: move them past the loaded rows.
            for table, _ in tables:
                name = table.__tablename__
                connection.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                        f"(SELECT max(id) FROM {name}))"
                    )
                )
    if engine.dialect.name == "postgresql":
        # What autovacuum does shortly after a bulk load; VACUUM cannot run in a transaction.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    else:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return {"rows": counts, "seconds": round(time.perf_counter() - start, 1)}


# -- measurements -------------------------------------------------------------------------------


def fresh_pairs(n: int = 8) -> list[ContrastPair]:
    tag = uuid.uuid4().hex
    return [
        ContrastPair(f"I am honest about {tag} number {j}", f"I lie about {tag} number {j}")
        for j in range(n)
    ]


@dataclass
class Backend:
    """One loaded catalogue: its URLs, the CLI's environment, an open `Registry`."""

    label: str
    database_url: str
    store_url: str
    env: dict[str, str]
    registry: Registry
    load: dict[str, Any]
    rng: random.Random = field(default_factory=lambda: random.Random(42))

    def cli(self, args: list[str], *, quick: bool = True) -> float:
        """Wall time of ``crx ARGS`` as a subprocess (Python start-up included); ``quick``
        False: with ``CRX_QUICK_READ=0``, so `show model` and `list vectors` read through the
        catalogue (SQLAlchemy) as before the quick read path."""
        env = {**self.env, "CRX_QUICK_READ": "1" if quick else "0"}
        start = time.perf_counter()
        result = subprocess.run([CRX, *args], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"crx {' '.join(args)} failed: {result.stderr.strip()}")
        return elapsed


def open_backend(
    label: str,
    database_url: str,
    workdir: Path,
    scale: dict[str, int],
    prepare: Callable[[Engine], None] | None = None,
) -> Backend:
    """Create the schema, bulk-load the catalogue and get the CLI ready to be timed."""
    store_url = str(workdir / f"store-{label}")
    registry = Registry(database_url, store_url)
    registry.init()
    print(f"[{label}] loading {scale} ...", flush=True)
    load = bulk_load(registry.db.sql_engine, scale)
    print(f"[{label}] loaded in {load['seconds']} s: {load['rows']}", flush=True)
    if prepare is not None:
        prepare(registry.db.sql_engine)
    registry.close()
    inherited = ("CRX_", "AWS_", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(inherited)},
        # Bytecode is cached as after a normal install (this sandbox sets
        # PYTHONDONTWRITEBYTECODE); the cache goes to the work folder, not the checkout.
        "PYTHONPYCACHEPREFIX": str(workdir / "pycache"),
        "CRX_HOME": str(workdir / "crx-home"),
        "CRX_DATABASE_URL": database_url,
        "CRX_STORE_URL": store_url,
        "CRX_ACTOR": "bench@catalog",
    }
    backend = Backend(label, database_url, store_url, env, Registry(database_url, store_url), load)
    backend.registry.list_models(limit=1)  # connect and check the schema, outside the timings
    for warm_up in (["--version"], ["show", "model", "model-0001"], ["list", "vectors"]):
        backend.cli(warm_up)  # fills the bytecode cache and the OS page cache
    return backend


def measure(
    backends: list[Backend], workdir: Path, scale: dict[str, int], runs: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Time every operation, alternating between the backends run by run.

    Other work on the machine then weighs on every backend alike. Each backend draws its
    references from its own generator with the same seed, so all look up the same rows.
    """
    results: dict[str, dict[str, Any]] = {b.label: {"load": b.load} for b in backends}

    def alternate(n: int, sample: Callable[[Backend], float]) -> dict[str, list[float]]:
        samples: dict[str, list[float]] = {b.label: [] for b in backends}
        for _ in range(n):
            for backend in backends:
                samples[backend.label].append(sample(backend))
        return samples

    def both_paths(n: int, args: Callable[[Backend], list[str]]) -> tuple[dict, dict]:  # type: ignore[type-arg]
        """The CLI with the quick read path and through the catalogue, run by run in turn
        (which goes first swaps every run), so the two see the same machine."""
        quick: dict[str, list[float]] = {b.label: [] for b in backends}
        catalogue: dict[str, list[float]] = {b.label: [] for b in backends}
        for i in range(n):
            for backend in backends:
                for fast in (True, False) if i % 2 == 0 else (False, True):
                    into = quick if fast else catalogue
                    into[backend.label].append(backend.cli(args(backend), quick=fast))
        return quick, catalogue

    def record(op: str, **modes: dict[str, list[float]]) -> None:
        busy = round(os.getloadavg()[0], 2)  # other work on the machine while this ran
        for backend in backends:
            entry = results[backend.label].setdefault(op, {})
            for mode, samples in modes.items():
                entry[mode] = summary(samples[backend.label])
            entry["loadavg_1m"] = busy

    def timed_call(call: Callable[[], Any]) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    refs: dict[str, Ref] = {
        "model": lambda rng: f"model-{rng.randint(1, scale['models']):04d}",
        # Half the concept lookups ask for the latest version (NAME), half for NAME@V.
        "concept": lambda rng: (
            f"concept-{rng.randint(1, scale['concepts']):04d}"
            + ("" if rng.random() < 0.5 else f"@{rng.randint(1, scale['versions'])}")
        ),
        "vector": lambda rng: str(rng.randint(1, scale["vectors"])),
        "map": lambda rng: str(rng.randint(1, scale["maps"])),
    }
    lookups: dict[str, Lookup] = {
        "model": lambda reg, ref: reg.get_model(ref),
        "concept": lambda reg, ref: reg.get_concept(ref),
        "vector": lambda reg, ref: reg.get_vector(int(ref)),
        "map": lambda reg, ref: reg.get_map(int(ref)),
    }

    print("crx --version (start-up floor) ...", flush=True)
    record("cli_startup", cli=alternate(runs["cli_startup"], lambda b: b.cli(["--version"])))

    for kind, make_ref in refs.items():
        print(f"show {kind} ...", flush=True)
        lookup = lookups[kind]

        def api_show(b: Backend, make_ref: Ref = make_ref, lookup: Lookup = lookup) -> float:
            ref = make_ref(b.rng)
            return timed_call(lambda: lookup(b.registry, ref))

        def cli_show(b: Backend, kind: str = kind, make_ref: Ref = make_ref) -> float:
            return b.cli(["show", kind, make_ref(b.rng)])

        if kind == "model":  # the one `show` the quick read path answers: both paths
            quick, catalogue = both_paths(
                runs["cli_show"], lambda b, make_ref=make_ref: ["show", "model", make_ref(b.rng)]
            )
            record(
                "show_model",
                cli=quick,
                cli_catalogue_path=catalogue,
                api=alternate(runs["api_show"], api_show),
            )
            continue
        record(
            f"show_{kind}",
            cli=alternate(runs["cli_show"], cli_show),
            api=alternate(runs["api_show"], api_show),
        )

    pages = {"first": None, "middle": scale["vectors"] // 2, "last": scale["vectors"] - 100}
    for where, after in pages.items():
        print(f"list vectors, {where} page ...", flush=True)
        for backend in backends:
            page = backend.registry.list_vectors(limit=100, after=after)
            assert len(page.items) == 100, (backend.label, where, len(page.items))
        args = ["list", "vectors", "--json", "--limit", "100"]
        if after is not None:
            args += ["--after", str(after)]

        def api_list(b: Backend, after: int | None = after) -> float:
            return timed_call(lambda: b.registry.list_vectors(limit=100, after=after))

        quick, catalogue = both_paths(runs["cli_list"], lambda b, args=args: args)
        record(
            f"list_vectors_{where}",
            cli=quick,
            cli_catalogue_path=catalogue,
            api=alternate(runs["api_list"], api_list),
        )
        for backend in backends:
            results[backend.label][f"list_vectors_{where}"]["after"] = after

    print("list vectors --model (in-process) ...", flush=True)

    def api_by_model(b: Backend) -> float:
        model = refs["model"](b.rng)
        return timed_call(lambda: b.registry.list_vectors(model=model, limit=100))

    record("list_vectors_by_model", api=alternate(runs["api_list"], api_by_model))

    print("register concept ...", flush=True)

    def api_register(b: Backend) -> float:
        name = f"concept-{b.rng.randint(1, scale['concepts']):04d}"
        pairs = fresh_pairs()
        start = time.perf_counter()
        outcome = b.registry.register_concept(name, pairs)
        elapsed = time.perf_counter() - start
        assert outcome.created
        assert outcome.record.version > scale["versions"]
        return elapsed

    counter = iter(range(1_000_000))

    def cli_register(b: Backend) -> float:
        name = f"concept-{b.rng.randint(1, scale['concepts']):04d}"
        pairs_file = workdir / f"pairs-{next(counter)}.json"
        pairs_file.write_text(
            json.dumps([{"positive": p.positive, "negative": p.negative} for p in fresh_pairs()])
        )
        return b.cli(["register", "concept", name, "--pairs", str(pairs_file)])

    record(
        "register_concept",
        cli=alternate(runs["cli_register"], cli_register),
        api=alternate(runs["api_register"], api_register),
    )
    expected = scale["concepts"] * scale["versions"] + runs["api_register"] + runs["cli_register"]
    for backend in backends:
        with backend.registry.db.sql_engine.connect() as connection:
            count = connection.scalar(select(func.count()).select_from(SqlConceptVersion.__table__))
        assert count == expected, (backend.label, count, expected)
        results[backend.label]["register_concept"]["concept_versions_after"] = count
    return results


def durable_postgres(server: PostgresServer) -> Callable[[Engine], None]:
    """Restart the test server without its speed settings, so writes are timed durably.

    ``tests.servers`` starts PostgreSQL with fsync, synchronous_commit and full_page_writes off
    on its command line, which ALTER SYSTEM cannot override; a restart without them can.
    """

    def prepare(engine: Engine) -> None:
        engine.dispose()
        options = f"-p {server.port} -k {server.folder} -c listen_addresses=127.0.0.1"
        server._run(
            "pg_ctl", "-D", str(server.folder / "data"), "-l", str(server.folder / "log"),
            "-w", "-t", "60", "-o", options, "restart",
        )  # fmt: skip

    return prepare


def git_commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0]
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory": meminfo.split(":", 1)[1].strip(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def postgres_settings(server: PostgresServer) -> dict[str, Any]:
    import psycopg

    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes")
    with psycopg.connect(server.url().replace("+psycopg", ""), autocommit=True) as conn:
        values = {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in names}
    return {**values, "connection": "TCP 127.0.0.1"}


def sqlite_settings(url: str) -> dict[str, Any]:
    registry = Registry(url, None)
    with registry.db.sql_engine.connect() as connection:
        settings = {
            "sqlite_version": connection.exec_driver_sql("select sqlite_version()").scalar(),
            "journal_mode": connection.exec_driver_sql("PRAGMA journal_mode").scalar(),
            "synchronous": connection.exec_driver_sql("PRAGMA synchronous").scalar(),
        }
    registry.close()
    return settings


# -- report -------------------------------------------------------------------------------------


def finish(
    report: dict[str, Any],
    started: float,
    table: Callable[[dict[str, Any]], str],
    out: Path | None,
) -> None:
    """Close a benchmark report: total time and load, the table printed, the JSON written."""
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(table(report))
    print(f"\ntotal {report['total_seconds']} s")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table: p50 / p95 in ms per backend: the CLI, the CLI through
    the catalogue where both paths were timed (``CRX_QUICK_READ=0``), the in-process API."""
    backends = list(report["backends"])
    header = " | ".join(f"{b} CLI | {b} CLI, catalogue | {b} API" for b in backends)
    lines = [f"| operation | {header} |", "|---|" + "---|---|---|" * len(backends)]
    for op, first in report["backends"][backends[0]].items():
        if not isinstance(first, dict) or not ({"cli", "api", "p50_ms"} & set(first)):
            continue
        cells = []
        for backend in backends:
            entry = report["backends"][backend][op]
            for mode in ("cli", "cli_catalogue_path", "api"):
                stats = entry if "p50_ms" in entry and mode == "cli" else entry.get(mode)
                cells.append(f"{stats['p50_ms']:.1f} / {stats['p95_ms']:.1f}" if stats else "–")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1/10 scale and fewer runs")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only print the tables of a results file"
    )
    parser.add_argument(
        "--backend", choices=["sqlite", "postgres"], action="append", help="default: both"
    )
    args = parser.parse_args()
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return
    mode = "quick" if args.quick else "full"
    scale, runs = SCALES[mode], RUNS[mode]
    backends = args.backend or ["sqlite", "postgres"]

    # A plain `kill` should still stop the PostgreSQL server and remove the work folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="crx-catalog-bench-"))
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "catalog",
        "mode": mode,
        "scale": {**scale, "concept_versions": scale["concepts"] * scale["versions"]},
        "runs": runs,
        "machine": machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "backends": {},
    }
    server: PostgresServer | None = None
    opened: list[Backend] = []
    settings: dict[str, dict[str, Any]] = {}
    try:
        if "sqlite" in backends:
            url = f"sqlite:///{workdir / 'registry.db'}"
            opened.append(open_backend("sqlite", url, workdir, scale))
            settings["sqlite"] = sqlite_settings(url)
        if "postgres" in backends:
            server = PostgresServer.start()
            server.execute("CREATE DATABASE crx_bench")
            opened.append(
                open_backend(
                    "postgres",
                    server.url("crx_bench"),
                    workdir,
                    scale,
                    prepare=durable_postgres(server),
                )
            )
            settings["postgres"] = postgres_settings(server)
            assert settings["postgres"]["fsync"] == "on", settings["postgres"]
        report["backends"] = measure(opened, workdir, scale, runs)
        for label, values in settings.items():
            report["backends"][label]["settings"] = values
    finally:
        for backend in opened:
            backend.registry.close()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for name, result in report["backends"].items():
        print(f"\n{name}: loaded {result['load']['rows']} in {result['load']['seconds']} s")
    finish(report, started, markdown, args.out)


if __name__ == "__main__":
    main()
