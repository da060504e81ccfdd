"""Audit trail queries at scale: `Governance.audit` and `Governance.alias_history`, in-process.

Builds, on SQLite (a file in a temporary folder) and on PostgreSQL (a throwaway server from
``tests.servers``), a registry with 1,000,000 audit events spread over ~10,000 objects (vectors,
maps, aliases, models, policies), eight actors, a dozen actions and two years, each with its
model, plus an alias (``honesty@prod`` on ``m0``) with a long history (10,000 moves among 20
real vectors) and 90,000 history rows of other aliases. Then times, in-process, p50 / p95 of:

* ``audit(object="vector:ID")``, ``audit(object="map:ID")``: one object's newest page;
* ``audit(object="honesty@prod", model="m0")``: the alias's moves and its vectors' events;
* the same ``--until`` a random date ("what was prod then, and who moved it");
* ``audit(model=..., action="alias.")`` and ``audit(actor=..., since=...)``: wider filters;
* ``alias_history("honesty", "m0", "prod")`` (all 10,000 rows) and with ``at=`` a random date.

The schema comes from ``Registry.init()`` (alembic); the models, concept, vectors and alias are
real registry calls. The events and history rows are bulk-inserted as the owner (sqlite3
``executemany``; PostgreSQL ``COPY`` with ``session_replication_role = replica``, so the
triggers that stamp the actor and time of each row, and would write one history row per alias
move, do not rewrite the synthetic ones), then ``ANALYZE``. Reads only: PostgreSQL keeps the
test server's fsync-off settings, which do not affect them.

    .venv/bin/python benchmarks/audit_bench.py --out benchmarks/results/audit.json
    .venv/bin/python benchmarks/audit_bench.py --quick      # 100,000 events, fewer queries
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Reuse the catalogue benchmark's helpers (statistics, machine facts, settings).
from sqlalchemy import text  # noqa: E402

from benchmarks.catalog_bench import (  # noqa: E402
    finish,
    git_commit,
    machine,
    postgres_settings,
    sqlite_settings,
    summary,
)
from crx import Registry  # noqa: E402
from crx.registry.pairs import ContrastPair  # noqa: E402
from tests.servers import PostgresServer  # noqa: E402

SCALES: dict[str, dict[str, int]] = {
    "full": {"events": 1_000_000, "vectors": 8_000, "maps": 1_500, "aliases": 400,
             "history": 10_000, "other_history": 90_000, "queries": 200},
    "quick": {"events": 100_000, "vectors": 800, "maps": 150, "aliases": 40,
              "history": 2_000, "other_history": 8_000, "queries": 50},
}  # fmt: skip
N_MODELS = 10
REAL_VECTORS = 20  # the vectors the long alias moves among (real rows: history references them)
ACTORS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
ACTIONS = {
    "vector": ["register", "replace", "approval.approve", "approval.reject", "deprecate"],
    "map": ["register", "replace", "deprecate"],
    "alias": ["alias.set", "alias.promote", "alias.delete"],
    "model": ["register", "update"],
    "policy": ["policy.create", "policy.update"],
}
# Share of the events by object kind (the rest: evaluations are left out: they need rows).
KINDS = [("vector", 0.70), ("map", 0.15), ("alias", 0.10), ("model", 0.03), ("policy", 0.02)]
START = datetime(2025, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=730)
COLUMNS = (
    "at", "actor", "action", "object_kind", "object_id", "object_ref", "new", "label", "reason",
    "model_id",
)  # fmt: skip
HISTORY_COLUMNS = (
    "alias_id", "concept_id", "model_id", "name", "revision", "action", "old_vector_id",
    "new_vector_id", "old_concept_version_id", "new_concept_version_id", "actor", "label",
    "reason", "at",
)  # fmt: skip


# -- the real rows ------------------------------------------------------------------------------


def real_rows(registry: Registry, workdir: Path) -> dict[str, Any]:
    """Models m0..m9, the concept honesty, 20 vectors of it on m0, honesty@prod → the first."""
    for index in range(N_MODELS):
        folder = workdir / f"model-{index}"
        folder.mkdir(exist_ok=True)
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  "num_hidden_layers": 4, "hidden_size": 8, "vocab_size": 50}  # fmt: skip
        (folder / "config.json").write_text(json.dumps(config))
        registry.register_model(f"m{index}", str(folder))
    pairs = [ContrastPair(f"good {i}", f"bad {i}") for i in range(4)]
    version = registry.register_concept("honesty", pairs).record
    rng = np.random.default_rng(0)
    vectors = [
        registry.save_vector(
            version.ref,
            "m0",
            rng.standard_normal((4, 8)).astype(np.float32),
            origin="extracted",
            estimator=f"bench-{i}",
        ).record.id
        for i in range(REAL_VECTORS)
    ]
    alias = registry.set_alias(version.ref, "m0", "staging", vector_id=vectors[0])
    models = {m.name: m.id for m in registry.list_models().items}
    return {
        "concept_id": registry.get_concept("honesty").id,
        "version_id": version.id,
        "vectors": vectors,
        "alias_id": alias.id,
        "models": models,
    }


# -- synthetic rows -----------------------------------------------------------------------------


def event_rows(scale: dict[str, int], facts: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """``scale["events"]`` events in time order; the long alias's events use its real id."""
    rng = random.Random(1)
    model_ids = list(facts["models"].values())
    counts = {"vector": scale["vectors"], "map": scale["maps"], "alias": scale["aliases"],
              "model": N_MODELS, "policy": 20}  # fmt: skip
    kinds, weights = zip(*KINDS, strict=True)
    step = SPAN / scale["events"]
    for index in range(scale["events"]):
        kind = rng.choices(kinds, weights)[0]
        object_id = rng.randint(1, counts[kind])
        if kind == "model":
            object_id = model_ids[object_id - 1]
        model_id = None if kind == "policy" else model_ids[object_id % N_MODELS]
        actor = ACTORS[rng.randrange(len(ACTORS))]
        yield (
            START + step * index,
            actor,
            rng.choice(ACTIONS[kind]),
            kind,
            object_id,
            f"policy-{object_id}" if kind == "policy" else f"{kind} {object_id}",
            json.dumps({"n": index}),
            actor.title(),
            "bulk" if index % 7 == 0 else None,
            model_id,
        )


def history_rows(scale: dict[str, int], facts: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """The long alias's moves (among the real vectors), then other aliases' histories. Alias
    ids 1..10 are among the synthetic alias events' object ids."""
    rng = random.Random(2)
    vectors, m0 = facts["vectors"], facts["models"]["m0"]
    concept, version = facts["concept_id"], facts["version_id"]
    step = SPAN / scale["history"]
    previous = vectors[0]
    for revision in range(1, scale["history"] + 1):
        new = vectors[rng.randrange(len(vectors))]
        yield (
            1, concept, m0, "prod", revision, "set" if revision == 1 else "promote",
            None if revision == 1 else previous, new, None if revision == 1 else version,
            version, ACTORS[revision % len(ACTORS)], None, f"move {revision}",
            START + step * revision,
        )  # fmt: skip
        previous = new
    per_alias = max(1, scale["other_history"] // 9)
    for other in range(9):
        for revision in range(1, per_alias + 1):
            yield (
                2 + other, concept, facts["models"][f"m{other + 1}"], "prod", revision,
                "promote", None, None, version, version, ACTORS[other % len(ACTORS)], None,
                None, START + SPAN / per_alias * revision,
            )  # fmt: skip


def bulk_sqlite(registry: Registry, rows: Iterator[tuple[Any, ...]], table: str,
                columns: tuple[str, ...]) -> None:  # fmt: skip
    connection = registry.db.sql_engine.raw_connection()
    try:
        cursor = connection.cursor()
        # crx's engine runs sqlite3 in autocommit and issues BEGIN itself: one transaction here,
        # not one fsync per row.
        cursor.execute("BEGIN")
        marks = ", ".join("?" for _ in columns)
        statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            # SQLAlchemy's SQLite DateTime text: naive UTC with microseconds.
            batch.append(tuple(_sqlite_value(v) for v in row))
            if len(batch) == 50_000:
                cursor.executemany(statement, batch)
                batch = []
        if batch:
            cursor.executemany(statement, batch)
        connection.commit()
        cursor.execute("ANALYZE")
        connection.commit()
    finally:
        connection.close()


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def bulk_postgres(server: PostgresServer, database: str, rows: Iterator[tuple[Any, ...]],
                  table: str, columns: tuple[str, ...]) -> None:  # fmt: skip
    import psycopg

    with psycopg.connect(server.url(database).replace("+psycopg", "")) as conn:
        # As the owner, without the triggers that would stamp every row with this session's
        # role and time (the point of a benchmark is many actors over two years).
        conn.execute("SET session_replication_role = replica")
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with conn.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[arg-type]
            for row in rows:
                copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute(f"ANALYZE {table}")


# -- measurement --------------------------------------------------------------------------------


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def random_day(rng: random.Random) -> str:
    return (START + timedelta(days=rng.randrange(SPAN.days))).date().isoformat()


def measure(registry: Registry, scale: dict[str, int]) -> dict[str, Any]:
    rng = random.Random(3)
    n = scale["queries"]
    with registry.db.read() as session:
        history_ids = int(session.scalar(text("SELECT max(id) FROM alias_history")) or 1)
    queries: dict[str, Callable[[], Any]] = {
        "audit vector:ID": lambda: registry.audit(
            object=f"vector:{rng.randint(1, scale['vectors'])}"
        ),
        "audit map:ID": lambda: registry.audit(object=f"map:{rng.randint(1, scale['maps'])}"),
        "audit honesty@prod --model m0": lambda: registry.audit(object="honesty@prod", model="m0"),
        "audit honesty@prod --model m0 --until DAY": lambda: registry.audit(
            object="honesty@prod", model="m0", until=random_day(rng)
        ),
        "audit --model M --action alias.": lambda: registry.audit(
            model=f"m{rng.randrange(N_MODELS)}", action="alias."
        ),
        "audit --actor A --since DAY": lambda: registry.audit(
            actor=rng.choice(ACTORS), since=random_day(rng)
        ),
        "alias_history honesty prod (all rows)": lambda: registry.alias_history(
            "honesty", "m0", "prod"
        ),
        # What `crx alias history` shows by default: a page of 100, from a random point.
        "alias_history honesty prod (a page of 100)": lambda: registry.alias_history(
            "honesty", "m0", "prod", limit=100, after=rng.randrange(history_ids)
        ),
        "alias_history honesty prod --at DAY": lambda: registry.alias_history(
            "honesty", "m0", "prod", at=datetime.fromisoformat(random_day(rng)).replace(tzinfo=UTC)
        ),
    }
    results: dict[str, Any] = {}
    for name, call in queries.items():
        call()  # warm: connections, caches, statement compilation
        seconds, sizes = [], []
        for _ in range(n):
            elapsed, result = timed(call)
            seconds.append(elapsed)
            sizes.append(len(result.items) if hasattr(result, "items") else len(result))
        results[name] = {**summary(seconds), "mean_rows": round(sum(sizes) / len(sizes), 1)}
        print(f"  {name}: p50 {results[name]['p50_ms']} ms, p95 {results[name]['p95_ms']} ms")
    return results


def load(
    label: str,
    registry: Registry,
    scale: dict[str, int],
    workdir: Path,
    bulk: Callable[[Iterator[tuple[Any, ...]], str, tuple[str, ...]], None],
) -> dict[str, Any]:
    started = time.perf_counter()
    facts = real_rows(registry, workdir)
    bulk(event_rows(scale, facts), "audit_events", COLUMNS)
    bulk(history_rows(scale, facts), "alias_history", HISTORY_COLUMNS)
    seconds = round(time.perf_counter() - started, 1)
    print(f"{label}: loaded {scale['events']:,} events in {seconds} s")
    return {"seconds": seconds}


def markdown(report: dict[str, Any]) -> str:
    backends = list(report["backends"])
    lines = [
        "| query | " + " | ".join(f"{b} p50 / p95 ms" for b in backends) + " | rows |",
        "|---|" + "---|" * len(backends) + "---|",
    ]
    first = report["backends"][backends[0]]["queries"]
    for name in first:
        cells = [
            f"{report['backends'][b]['queries'][name]['p50_ms']:.1f} / "
            f"{report['backends'][b]['queries'][name]['p95_ms']:.1f}"
            for b in backends
        ]
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {first[name]['mean_rows']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1/10 scale, fewer queries")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only print the table")
    parser.add_argument(
        "--backend", choices=["sqlite", "postgres"], action="append", help="default: both"
    )
    args = parser.parse_args()
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return
    mode = "quick" if args.quick else "full"
    scale = SCALES[mode]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="crx-audit-bench-"))
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "audit",
        "mode": mode,
        "scale": scale,
        "machine": machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "backends": {},
    }
    server: PostgresServer | None = None
    try:
        for backend in args.backend or ["sqlite", "postgres"]:
            if backend == "sqlite":
                url = f"sqlite:///{workdir / 'registry.db'}"
                registry = Registry(url, str(workdir / "store-sqlite"))
                registry.init()
                loaded = load(
                    "sqlite", registry, scale, workdir,
                    lambda rows, table, cols, r=registry: bulk_sqlite(r, rows, table, cols),
                )  # fmt: skip
                settings = sqlite_settings(url)
            else:
                server = PostgresServer.start()
                server.execute("CREATE DATABASE crx_bench")
                registry = Registry(server.url("crx_bench"), str(workdir / "store-postgres"))
                registry.init()
                loaded = load(
                    "postgres", registry, scale, workdir,
                    lambda rows, table, cols, s=server: bulk_postgres(
                        s, "crx_bench", rows, table, cols
                    ),
                )  # fmt: skip
                settings = postgres_settings(server)
            try:
                report["backends"][backend] = {
                    "load": loaded,
                    "queries": measure(registry, scale),
                    "settings": settings,
                }
            finally:
                registry.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    finish(report, started, markdown, args.out)


if __name__ == "__main__":
    main()
