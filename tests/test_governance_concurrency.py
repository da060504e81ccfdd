"""Governance under 16 concurrent writers: real processes on one SQLite file or PostgreSQL database.

A pool of 16 worker interpreters (``python -c``) starts once per database kind. For each
scenario the test makes a fresh database and store, and every worker opens the registry there
(on PostgreSQL as its own login role, on SQLite with its own ``CRX_ACTOR``) and says ``ready``.
Then the test sends every worker its part of a round, with one start time on the machine's
monotonic clock (shared by all its processes), so the work really overlaps; each worker
answers one JSON line with what it did and when (monotonic timestamps), and the test checks
the invariants against those timestamps and against the database.

Scenarios: compare-and-swap alias moves (one winner per round, no move lost), a promotion
racing approvals and a deprecation of the same vector, ``gc`` with no grace period while others
register, move aliases and promote, and SQLite's bounded wait for another process's lock.
"""

from __future__ import annotations

import json
import os
import random
import select
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crx.registry import Registry
from crx.registry.errors import DatabaseUnavailable, InvalidInput
from crx.registry.pairs import ContrastPair
from tests.databases import postgres_url, sqlite_url
from tests.servers import PostgresServer

N_WORKERS = 16
N_LAYERS, D_MODEL = 4, 32
# Roles of the workers in the promotion race (on PostgreSQL, their login roles' groups).
PROMOTER, DEPRECATOR = 0, 1
APPROVERS = list(range(2, N_WORKERS))
# Roles in the gc scenario.
COLLECTOR, GC_PROMOTER = 0, 1
CHURNERS = list(range(2, N_WORKERS))
REPLY_TIMEOUT = 120.0

WORKER = r"""
import json, os, sys, time
import numpy as np
from crx.registry import Registry
from crx.registry.errors import CrxError
from crx.registry.pairs import ContrastPair

index = int(sys.argv[1])
registry = None


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def wait_until(moment):
    pause = moment - time.monotonic()
    if pause > 0:
        time.sleep(pause)


def attempt(what, fn):
    # CrxError is an answer; anything else is a bug and kills the worker with its traceback.
    t0 = time.monotonic()
    try:
        value = fn()
    except CrxError as exc:
        return dict(what=what, ok=False, t0=t0, t1=time.monotonic(),
                    error=type(exc).__name__, message=str(exc))
    return dict(what=what, ok=True, t0=t0, t1=time.monotonic(), value=value)


def op_open(cmd):
    global registry
    if registry is not None:
        registry.close()
    os.environ["CRX_ACTOR"] = cmd["actor"]
    registry = Registry(cmd["db"], cmd["store"])
    registry.list_concepts(limit=1)  # connect and check the schema before the start line
    return {"ready": True}


def op_read_alias(cmd):
    record = registry.get_alias(cmd["ref"], cmd["model"])
    return {"revision": record.revision, "vector_id": record.vector_id}


def op_cas(cmd):
    wait_until(cmd["start_at"])
    return attempt("cas", lambda: registry.set_alias(
        cmd["ref"], cmd["model"], cmd["alias"], vector_id=cmd["vector_id"],
        expect_revision=cmd["expect_revision"]).revision)


def op_approve(cmd):
    wait_until(cmd["start_at"] + cmd["delay"])
    return attempt("approve", lambda: registry.approve(
        cmd["ref"], cmd["model"], vector_id=cmd["vector_id"]).id)


def op_deprecate(cmd):
    wait_until(cmd["start_at"] + cmd["delay"])
    return attempt("deprecate", lambda: registry.deprecate(
        f"vector:{cmd['vector_id']}", reason=f"round {cmd['round']}").id)


def op_promote(cmd):
    wait_until(cmd["start_at"])
    own = None
    if cmd["self_approve"]:
        own = attempt("approve", lambda: registry.approve(
            cmd["ref"], cmd["model"], vector_id=cmd["vector_id"]).id)
    tries = []
    while True:
        result = attempt("promote", lambda: registry.promote(
            cmd["ref"], cmd["model"], to="prod", vector_id=cmd["vector_id"],
            reason=f"round {cmd['round']}").alias_record.revision)
        tries.append(result)
        if result["ok"] or time.monotonic() > cmd["until"]:
            return {"own_approval": own, "tries": tries}
        time.sleep(cmd["pause"])


def op_churn(cmd):
    wait_until(cmd["start_at"])
    rng = np.random.default_rng(index)
    made, errors = [], []
    i = 0
    while time.monotonic() < cmd["until"]:
        tag = f"w{index}-{i}"
        pairs = [ContrastPair(f"{tag} kind {j}", f"{tag} cruel {j}") for j in range(2)]

        def one_round():
            version = registry.register_concept(f"churn{index}", pairs).record
            array = rng.standard_normal((cmd["n_layers"], cmd["d_model"])).astype(np.float32)
            vector = registry.save_vector(version, cmd["model"], array, origin="extracted").record
            registry.set_alias(version.ref, cmd["model"], "staging", vector_id=vector.id)
            other = rng.standard_normal((cmd["n_layers"], cmd["d_model"])).astype(np.float32)
            shared = registry.save_vector(
                "shared@1", cmd["model"], other, origin="extracted", estimator=tag).record
            registry.set_alias("shared@1", cmd["model"], "latest", vector_id=shared.id)
            return [version.ref, vector.id, shared.id]

        result = attempt("churn", one_round)
        (made if result["ok"] else errors).append(result)
        i += 1
    return {"made": made, "errors": errors}


def op_promote_loop(cmd):
    wait_until(cmd["start_at"])
    tries = []
    i = 0
    while time.monotonic() < cmd["until"]:
        vector_id = cmd["vector_ids"][i % len(cmd["vector_ids"])]
        tries.append(attempt("promote", lambda: registry.promote(
            cmd["ref"], cmd["model"], to="prod", vector_id=vector_id).alias_record.vector_id))
        i += 1
    return {"tries": tries}


def op_gc_loop(cmd):
    wait_until(cmd["start_at"])
    runs = []
    while time.monotonic() < cmd["until"]:
        runs.append(attempt("gc", lambda: len(
            registry.gc_store(dry_run=False, grace_seconds=0).unreferenced)))
    return {"runs": runs}


def op_idle(cmd):
    return {}


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}
for line in sys.stdin:
    command = json.loads(line)
    send(OPS[command["op"]](command))
if registry is not None:
    registry.close()
sys.stdout.flush()
os._exit(0)  # skip the interpreter's teardown: sixteen of them add up
"""


# -- the worker pool ----------------------------------------------------------------------------


class Pool:
    """N worker processes; each command is one JSON line in and one JSON line out."""

    def __init__(self, n: int, env: dict[str, str], logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = [logs / f"worker-{i}.log" for i in range(n)]
        self.processes = []
        for i in range(n):
            with open(self.logs[i], "wb") as err:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-c", WORKER, str(i)],
                        env=env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        bufsize=0,
                    )
                )
        self.buffers = [b""] * n

    def send(self, i: int, command: dict[str, Any]) -> None:
        stdin = self.processes[i].stdin
        assert stdin is not None
        stdin.write((json.dumps(command) + "\n").encode())
        stdin.flush()

    def receive(self, i: int) -> Any:
        process = self.processes[i]
        assert process.stdout is not None
        deadline = time.monotonic() + REPLY_TIMEOUT
        while b"\n" not in self.buffers[i]:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([process.stdout], [], [], max(left, 0))
            chunk = os.read(process.stdout.fileno(), 65536) if ready else b""
            if not chunk:  # nothing in time, or end of file: the worker died
                why = "timed out" if not ready else f"exited with {process.wait(30)}"
                log = self.logs[i].read_text(errors="replace")[-4000:]
                raise AssertionError(f"worker {i} {why} without answering:\n{log}")
            self.buffers[i] += chunk
        line, _, rest = self.buffers[i].partition(b"\n")
        self.buffers[i] = rest
        return json.loads(line)

    def run(self, commands: list[dict[str, Any]]) -> list[Any]:
        """Send every worker its command (all before any answer is read), then collect."""
        for i, command in enumerate(commands):
            self.send(i, command)
        return [self.receive(i) for i in range(len(commands))]

    def close(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for process in self.processes:
            if process.stdout is not None:
                process.stdout.close()


@dataclass
class Scenario:
    """A fresh database and store that every worker has opened."""

    db_url: str  # the test's own URL (PostgreSQL: the superuser, who owns the tables)
    store: str
    actors: list[str]  # the identity the database records for each worker
    root: Path

    def registry(self) -> Registry:
        return Registry(self.db_url, self.store)


@dataclass
class GovPool:
    """The pool on one database kind; `scenario` gives each test a fresh database."""

    kind: str
    pool: Pool
    tmp: pytest.TempPathFactory
    sqlite_template: Path
    server: PostgresServer | None = None
    users: list[tuple[str, str]] = field(default_factory=list)  # (role name, password)

    def scenario(self, name: str) -> Scenario:
        root = self.tmp.mktemp(name)
        store = str(root / "store")
        if self.kind == "sqlite":
            db_url = sqlite_url(root, self.sqlite_template)
            actors = [f"{name}-w{i}" for i in range(N_WORKERS)]
            urls = [db_url] * N_WORKERS
        else:
            assert self.server is not None
            db_url = postgres_url(self.server)
            database = db_url.rsplit("/", 1)[1]
            actors = [user for user, _ in self.users]
            urls = [self.server.url(database, user=u, password=p) for u, p in self.users]
        with Registry(db_url, store) as registry:
            registry.init()
            if self.kind == "postgres":
                registry.ensure_roles()  # the group roles' grants are per database
        answers = self.pool.run(
            [
                {"op": "open", "db": url, "store": store, "actor": actor}
                for url, actor in zip(urls, actors, strict=True)
            ]
        )
        assert all(a == {"ready": True} for a in answers), answers
        return Scenario(db_url, store, actors, root)


def _role_of(worker: int) -> str:
    # Worker 0 promotes in the race and collects garbage in the gc scenario (the owner's work
    # on PostgreSQL); the deprecator is a plain writer; the rest approve.
    if worker == COLLECTOR:
        return "owner"
    return "writer" if worker == DEPRECATOR else "approver"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """The 16 workers: their interpreters start once, for both database kinds."""
    root = tmp_path_factory.mktemp("gov-pool")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRX_")}
    env["CRX_HOME"] = str(root / "home")
    workers = Pool(N_WORKERS, env, root / "logs")
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gov(
    request: pytest.FixtureRequest,
    pool: Pool,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
) -> GovPool:
    """The pool on one database kind (on PostgreSQL, with a login role per worker)."""
    server = None
    users: list[tuple[str, str]] = []
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        # Roles are the cluster's, not the database's: unique names per run.
        suffix = uuid.uuid4().hex[:8]
        users = [(f"crxgov_{suffix}_w{i}", uuid.uuid4().hex) for i in range(N_WORKERS)]
        store = str(tmp_path_factory.mktemp("gov-roles") / "store")
        with Registry(postgres_url(server), store) as registry:
            registry.ensure_roles()
            for i, (user, password) in enumerate(users):
                registry.add_user(user, _role_of(i), password)
    return GovPool(request.param, pool, tmp_path_factory, sqlite_template, server, users)


# -- helpers ------------------------------------------------------------------------------------


def _model(registry: Registry, root: Path) -> str:
    folder = root / "tiny-model"
    folder.mkdir()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": N_LAYERS,
        "hidden_size": D_MODEL,
        "vocab_size": 50,
    }
    (folder / "config.json").write_text(json.dumps(config))
    registry.register_model("tiny", str(folder))
    return "tiny"


def _pairs(tag: str) -> list[ContrastPair]:
    return [ContrastPair(f"{tag} kind {i}", f"{tag} cruel {i}") for i in range(2)]


def _vector(registry: Registry, ref: str, estimator: str, seed: int) -> int:
    array = np.random.default_rng(seed).standard_normal((N_LAYERS, D_MODEL)).astype(np.float32)
    saved = registry.save_vector(ref, "tiny", array, origin="extracted", estimator=estimator)
    return saved.record.id


def _start_at(lead: float = 0.25) -> float:
    """A start time far enough ahead for every worker to have its command by then."""
    return time.monotonic() + lead


# -- 1. compare-and-swap ------------------------------------------------------------------------

CAS_ROUNDS = 4


def test_alias_compare_and_swap_has_one_winner_per_round_and_loses_no_move(gov: GovPool) -> None:
    scenario = gov.scenario("cas")
    with scenario.registry() as registry:
        _model(registry, scenario.root)
        ref = registry.register_concept("cas", _pairs("cas")).record.ref
        initial = _vector(registry, ref, "initial", 0)
        registry.set_alias(ref, "tiny", "staging", vector_id=initial)
        # A fresh vector per worker per round: every success is a real move.
        vectors = [
            [_vector(registry, ref, f"r{r}-w{w}", 1 + r * N_WORKERS + w) for w in range(N_WORKERS)]
            for r in range(CAS_ROUNDS + 1)  # the last: moves without an expectation
        ]
        before = registry.audit_events(limit=None).items[-1].id

    winners = []
    for r in range(CAS_ROUNDS):
        # Everyone reads first, then everyone swaps at once: all bets are on the same revision.
        reads = gov.pool.run(
            [{"op": "read_alias", "ref": "cas@staging", "model": "tiny"}] * N_WORKERS
        )
        revision = r + 1
        assert {(a["revision"], a["vector_id"]) for a in reads} == {
            (revision, winners[-1] if winners else initial)
        }
        start = _start_at()
        results = gov.pool.run(
            [
                {
                    "op": "cas",
                    "start_at": start,
                    "ref": ref,
                    "model": "tiny",
                    "alias": "staging",
                    "vector_id": vectors[r][w],
                    "expect_revision": reads[w]["revision"],
                }
                for w in range(N_WORKERS)
            ]
        )
        won = [w for w, result in enumerate(results) if result["ok"]]
        assert len(won) == 1, (r, results)
        winner = vectors[r][won[0]]
        assert results[won[0]]["value"] == revision + 1
        winners.append(winner)
        for w, result in enumerate(results):
            if w == won[0]:
                continue
            assert result["error"] == "AliasConflict", result
            # The loser is told what it lost to: the winner's vector and revision.
            assert f"expected revision {revision})" in result["message"], result
            assert (
                f"it is now vector {winner} (version 1, revision {revision + 1},"
                in (result["message"])
            ), result

    # Moves without an expectation, all at once: last writer wins, and none is refused or lost.
    start = _start_at()
    results = gov.pool.run(
        [
            {
                "op": "cas",
                "start_at": start,
                "ref": ref,
                "model": "tiny",
                "alias": "staging",
                "vector_id": vectors[CAS_ROUNDS][w],
                "expect_revision": None,
            }
            for w in range(N_WORKERS)
        ]
    )
    assert all(result["ok"] for result in results), [r for r in results if not r["ok"]]
    first = CAS_ROUNDS + 2
    assert sorted(result["value"] for result in results) == list(range(first, first + N_WORKERS))

    with scenario.registry() as registry:
        history = registry.alias_history("cas", "tiny", "staging")
        assert [h.revision for h in history] == list(range(1, first + N_WORKERS))
        free = history[first - 1 :]
        by_revision = {result["value"]: vectors[CAS_ROUNDS][w] for w, result in enumerate(results)}
        assert [h.new_vector_id for h in free] == [by_revision[h.revision] for h in free]
        assert [h.old_vector_id for h in free] == [winners[-1]] + [
            h.new_vector_id for h in free[:-1]
        ]
        final = registry.get_alias("cas@staging", "tiny")
        assert (final.vector_id, final.revision) == (free[-1].new_vector_id, free[-1].revision)
        history = history[: first - 1]
        assert [h.revision for h in history] == list(range(1, CAS_ROUNDS + 2))
        assert [h.new_vector_id for h in history] == [initial, *winners]
        assert [h.old_vector_id for h in history] == [None, initial, *winners[:-1]]
        assert [h.action for h in history] == ["set"] + ["move"] * CAS_ROUNDS
        # Each move is recorded as made by the worker that won it.
        winner_actors = [
            scenario.actors[next(w for w in range(N_WORKERS) if vectors[r][w] == winners[r])]
            for r in range(CAS_ROUNDS)
        ]
        assert [h.actor for h in history[1:]] == winner_actors
        events = [e for e in registry.audit_events(limit=None).items if e.id > before]
        assert [(e.action, e.new["vector_id"]) for e in events] == [  # type: ignore[index]
            ("alias.set", v) for v in winners + [h.new_vector_id for h in free]
        ]


# -- 2. promotion racing approvals and a deprecation --------------------------------------------

PROMOTION_ROUNDS = 10


@dataclass
class RoundPlan:
    vector_id: int
    approvers: dict[int, float]  # worker → delay after the start
    deprecate: float | None  # the deprecator's delay, or no deprecation this round
    self_approve: bool
    length: float


def _plans(registry: Registry, ref: str, rng: random.Random) -> list[RoundPlan]:
    plans = []
    for r in range(PROMOTION_ROUNDS):
        vector_id = _vector(registry, ref, f"round{r}", 1000 + r)
        if r == 0:  # only the promoter's own approval: it must never be enough
            plans.append(RoundPlan(vector_id, {}, None, True, 0.3))
        elif r == 1:  # everyone approves, nobody deprecates: it must succeed
            plans.append(RoundPlan(vector_id, dict.fromkeys(APPROVERS, 0.0), None, False, 5.0))
        elif r == 2:  # deprecated at once, approvers a little later
            approvers = {w: rng.uniform(0.05, 0.15) for w in APPROVERS}
            plans.append(RoundPlan(vector_id, approvers, 0.0, rng.random() < 0.5, 0.4))
        else:
            chosen = rng.sample(APPROVERS, rng.choice([0, 1, 1, 2, 3, len(APPROVERS)]))
            approvers = {w: rng.uniform(0.0, 0.2) for w in chosen}
            deprecate = rng.uniform(0.0, 0.25) if rng.random() < 0.6 else None
            plans.append(RoundPlan(vector_id, approvers, deprecate, rng.random() < 0.5, 0.4))
    return plans


def _commands(plan: RoundPlan, r: int, ref: str, start: float) -> list[dict[str, Any]]:
    common = {"ref": ref, "model": "tiny", "vector_id": plan.vector_id, "round": r}
    commands: list[dict[str, Any]] = [{"op": "idle"} for _ in range(N_WORKERS)]
    commands[PROMOTER] = {
        "op": "promote",
        "start_at": start,
        "self_approve": plan.self_approve,
        "until": start + plan.length,
        "pause": 0.01,
        **common,
    }
    if plan.deprecate is not None:
        commands[DEPRECATOR] = {
            "op": "deprecate",
            "start_at": start,
            "delay": plan.deprecate,
            **common,
        }
    for w, delay in plan.approvers.items():
        commands[w] = {"op": "approve", "start_at": start, "delay": delay, **common}
    return commands


def test_promotion_racing_approvals_and_a_deprecation_keeps_every_rule(gov: GovPool) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    scenario = gov.scenario("promote")
    promoter = scenario.actors[PROMOTER]
    with scenario.registry() as registry:
        _model(registry, scenario.root)
        ref = registry.register_concept("gov", _pairs("gov")).record.ref
        plans = _plans(registry, ref, rng)
        before = registry.audit_events(limit=None).items[-1].id

    promoted: list[int] = []  # the vectors promoted, in order
    expected_events: Counter[str] = Counter()
    approved_by: dict[int, set[str]] = {}  # vector → who else approved it (successfully)
    approvals_made: list[tuple[int, str]] = []  # (vector, actor) of every approval that worked
    for r, plan in enumerate(plans):
        where = f"seed {seed}, round {r}"
        results = gov.pool.run(_commands(plan, r, ref, _start_at()))
        tries = results[PROMOTER]["tries"]
        own = results[PROMOTER]["own_approval"]
        deprecation = results[DEPRECATOR] if plan.deprecate is not None else None
        approvals = [results[w] for w in plan.approvers]
        if deprecation is not None:
            assert deprecation["ok"], (where, deprecation)
            expected_events["deprecate"] += 1
        for w, approval in zip(plan.approvers, approvals, strict=True):
            if approval["ok"]:
                expected_events["approval.approve"] += 1
                approved_by.setdefault(plan.vector_id, set()).add(scenario.actors[w])
                approvals_made.append((plan.vector_id, scenario.actors[w]))
                # Only a deprecation that had begun could have stopped it: none did.
                assert deprecation is None or approval["t0"] < deprecation["t1"], (where, approval)
            else:
                # Refused only because the vector was deprecated, by a deprecation that had begun.
                assert approval["error"] == "DeprecatedObject", (where, approval)
                assert deprecation is not None, (where, approval)
                assert deprecation["t0"] < approval["t1"], (where, approval, deprecation)
        if own is not None:
            assert own["ok"] or own["error"] == "DeprecatedObject", (where, own)
            if own["ok"]:
                expected_events["approval.approve"] += 1
                approvals_made.append((plan.vector_id, promoter))
        assert tries, where
        assert all(t["ok"] or t["error"] == "PromotionRefused" for t in tries), (where, tries)
        assert [t["ok"] for t in tries].count(True) <= 1
        for attempt in tries:
            others_before = [a for a in approvals if a["ok"] and a["t0"] < attempt["t1"]]
            deprecated_first = deprecation is not None and deprecation["t1"] < attempt["t0"]
            if attempt["ok"]:
                # A success had an approval by someone else that began before it ended ...
                assert others_before, (where, attempt, approvals)
                # ... and no deprecation that had completed before it started.
                assert not deprecated_first, (where, attempt, deprecation)
            if deprecated_first:
                assert not attempt["ok"], (where, attempt, deprecation)
                assert "deprecated" in attempt["message"], (where, attempt)
            if not others_before:
                assert not attempt["ok"], (where, attempt)
                assert (
                    f"approvals: 0 of 1 from someone other than {promoter}" in (attempt["message"])
                ), (where, attempt)
        if tries[-1]["ok"]:
            promoted.append(plan.vector_id)
            assert tries[-1]["value"] == len(promoted), (where, tries[-1])
            expected_events["alias.promote"] += 1
            # The database holds an approval of that vector by someone other than the promoter.
            assert approved_by.get(plan.vector_id, set()) - {promoter}, where
        if r == 0:
            assert own is not None, where
            assert own["ok"], (where, own)
            assert not tries[-1]["ok"], (where, tries)
            assert f"{promoter}'s own approval does not count" in tries[-1]["message"]
        if r == 1:
            assert tries[-1]["ok"], (where, tries, approvals)

    with scenario.registry() as registry:
        where = f"seed {seed}"
        # A refused promotion (or approval) changed nothing: the trail holds the successes only.
        events = [e for e in registry.audit_events(limit=None).items if e.id > before]
        assert Counter(e.action for e in events) == expected_events, where
        promotions = [e for e in events if e.action == "alias.promote"]
        assert [e.new["vector_id"] for e in promotions] == promoted, where  # type: ignore[index]
        assert all(e.actor == promoter for e in promotions), where
        # The history is complete and in order: one row per promotion, contiguous revisions.
        history = registry.alias_history("gov", "tiny", "prod")
        assert [h.revision for h in history] == list(range(1, len(promoted) + 1)), where
        assert [h.new_vector_id for h in history] == promoted, where
        assert [h.old_vector_id for h in history] == [None, *promoted[:-1]], where
        assert {h.action for h in history} == {"promote"}, where
        assert {h.actor for h in history} == {promoter}, where
        assert registry.get_alias("gov@prod", "tiny").vector_id == promoted[-1], where
        # Approvals and deprecations: one row per success, stamped with the worker's identity.
        stored = sorted((a.vector_id, a.actor) for a in registry.list_approvals(model="tiny"))
        assert stored == sorted(approvals_made), where
        assert len(registry.list_deprecations()) == expected_events["deprecate"], where


# -- 3. gc while others register, move aliases and promote --------------------------------------

GC_SECONDS = 2.5


def test_gc_without_grace_racing_writers_loses_no_referenced_blob(gov: GovPool) -> None:
    scenario = gov.scenario("gc")
    with scenario.registry() as registry:
        _model(registry, scenario.root)
        registry.register_concept("shared", _pairs("shared"))
        base = registry.register_concept("base", _pairs("base")).record.ref
        pre_approved = [_vector(registry, base, f"approved{i}", 7000 + i) for i in range(2)]
        for vector_id in pre_approved:  # by the test's identity, not the promoting worker's
            registry.approve(base, "tiny", vector_id=vector_id)
        # Garbage for gc to find: unreferenced blobs, as a killed writer leaves them.
        garbage = [registry.store.put(os.urandom(64)) for _ in range(3)]

    start = _start_at(0.4)
    until = start + GC_SECONDS
    commands: list[dict[str, Any]] = [
        {
            "op": "churn",
            "start_at": start,
            "until": until,
            "model": "tiny",
            "n_layers": N_LAYERS,
            "d_model": D_MODEL,
        }
        for _ in range(N_WORKERS)
    ]
    commands[COLLECTOR] = {"op": "gc_loop", "start_at": start, "until": until}
    commands[GC_PROMOTER] = {
        "op": "promote_loop",
        "start_at": start,
        "until": until,
        "ref": base,
        "model": "tiny",
        "vector_ids": pre_approved,
    }
    results = gov.pool.run(commands)

    runs = results[COLLECTOR]["runs"]
    assert runs
    assert all(run["ok"] for run in runs), [run for run in runs if not run["ok"]]
    promotions = results[GC_PROMOTER]["tries"]
    assert promotions
    assert all(p["ok"] for p in promotions), [p for p in promotions if not p["ok"]]
    made = []
    for w in CHURNERS:
        errors = [(e["error"], e["message"]) for e in results[w]["errors"]]
        assert errors == [], (w, errors[:3])
        made += results[w]["made"]
    assert made
    # gc really ran while the writers wrote: some run started before the last write ended.
    last_write = max(m["t1"] for m in made)
    first_write = min(m["t0"] for m in made)
    assert sum(first_write < run["t1"] and run["t0"] < last_write for run in runs) >= 1

    with scenario.registry() as registry:
        report = registry.verify_store()
        assert report.problems == []
        for oid in garbage:
            assert not registry.store.exists(oid)
        aliases = registry.list_aliases(model="tiny")
        assert {a.concept for a in aliases} == {"base", "shared"} | {f"churn{w}" for w in CHURNERS}
        for alias in aliases:
            assert registry.load_vector(alias.vector_id).shape == (N_LAYERS, D_MODEL)
        for version_ref, vector_id, shared_id in (m["value"] for m in made):
            assert len(registry.load_pairs(version_ref)) == 2
            for vid in (vector_id, shared_id):
                assert registry.load_vector(vid).shape == (N_LAYERS, D_MODEL)
        # The last promotion is what prod points at.
        assert registry.get_alias("base@prod", "tiny").vector_id == promotions[-1]["value"]
        assert len(registry.alias_history("base", "tiny", "prod")) == len(promotions)


WINDOW_WRITER = r"""
import sys, time
from pathlib import Path
import numpy as np
from crx.registry import Registry

db, store, marker, go = sys.argv[1:5]
registry = Registry(db, store)
real_ensure_present = registry.store.ensure_present


def present_then_wait(oid, data):
    # Inside the write transaction, after the blob check and before the rows: gc's window.
    real_ensure_present(oid, data)
    Path(marker).write_text(oid)
    deadline = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


registry.store.ensure_present = present_then_wait
array = np.ones((4, 32), dtype=np.float32)
print(registry.save_vector("window@1", "tiny", array, origin="extracted").record.id)
"""


def test_gc_waits_for_a_writer_between_its_blob_check_and_its_rows(
    db_url: str, tmp_path: Path
) -> None:
    """The race the 16 writers above hit on SQLite, made deterministic: a writer has checked its
    blob is there and not yet written its rows when gc starts with no grace. gc must wait for
    the writer's transaction (the blob lease; on SQLite, the write lock) and then see the row."""
    store = str(tmp_path / "store")
    with Registry(db_url, store) as registry:
        registry.init()
        _model(registry, tmp_path)
        registry.register_concept("window", _pairs("window"))
    marker, go = tmp_path / "checked", tmp_path / "go"
    writer = subprocess.Popen(
        [sys.executable, "-c", WINDOW_WRITER, db_url, store, str(marker), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reports = []

    def collect() -> None:
        with Registry(db_url, store) as collector:
            reports.append(collector.gc_store(dry_run=False, grace_seconds=0))

    collector = threading.Thread(target=collect)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and writer.poll() is None:
            time.sleep(0.02)
        assert marker.exists(), writer.communicate(timeout=30)
        oid = marker.read_text()
        collector.start()
        collector.join(1.0)
        gc_waited = collector.is_alive()
    finally:
        go.write_text("go")
        out, err = writer.communicate(timeout=120)
        if collector.is_alive() or collector.ident is not None:
            collector.join(120)
    assert writer.returncode == 0, err
    assert gc_waited, reports  # it did not delete while the writer was inside its transaction
    assert len(reports) == 1
    assert oid not in reports[0].unreferenced
    with Registry(db_url, store) as registry:
        assert registry.verify_store().problems == []
        assert registry.load_vector(int(out)).shape == (N_LAYERS, D_MODEL)


# -- 4. SQLite writers wait for a lock, for a bounded time --------------------------------------

SETTER = r"""
import json, os, sys, time
from crx.registry import Registry
from crx.registry.errors import CrxError

db, store, ref, vector_id = sys.argv[1:5]
registry = Registry(db, store)
registry.list_concepts(limit=1)
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
t0 = time.monotonic()
print(json.dumps({"started": t0}), flush=True)
try:
    revision = registry.set_alias(ref, "tiny", "staging", vector_id=int(vector_id)).revision
    result = dict(ok=True, revision=revision)
except CrxError as exc:
    result = dict(ok=False, error=type(exc).__name__, message=str(exc))
result["t1"] = time.monotonic()
result["waited"] = result["t1"] - t0
print(json.dumps(result), flush=True)
"""


@pytest.fixture
def locked_world(tmp_path: Path, sqlite_template: Path) -> Iterator[tuple[str, str, str, int]]:
    """A SQLite registry with a concept, a model and a vector; (db URL, file, store, vector)."""
    db_url = sqlite_url(tmp_path, sqlite_template)
    store = str(tmp_path / "store")
    with Registry(db_url, store) as registry:
        registry.init()
        _model(registry, tmp_path)
        ref = registry.register_concept("busy", _pairs("busy")).record.ref
        vector_id = _vector(registry, ref, "mean_diff", 1)
    return db_url, store, ref, vector_id


def _run_setter(
    db_url: str, store: str, ref: str, vector_id: int, hold: float, env: dict[str, str]
) -> dict[str, Any]:
    """Hold SQLite's write lock (a raw ``BEGIN IMMEDIATE`` here, in the test's process) from
    before a worker process starts setting an alias until ``hold`` seconds after it started;
    the worker's answer, with ``released``: when the lock was let go (monotonic clock)."""
    setter = subprocess.Popen(
        [sys.executable, "-c", SETTER, db_url, store, ref, str(vector_id)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        assert setter.stdout is not None
        assert setter.stdin is not None
        line = setter.stdout.readline()
        assert line.strip() == "ready", (line, setter.communicate(timeout=30))
        holder.execute("BEGIN IMMEDIATE")
        setter.stdin.write("go\n")
        setter.stdin.flush()
        started = json.loads(setter.stdout.readline())["started"]
        time.sleep(max(0.0, started + hold - time.monotonic()))
        released = time.monotonic()
        holder.execute("ROLLBACK")
        out, err = setter.communicate(timeout=120)
    finally:
        holder.close()
        if setter.poll() is None:
            setter.kill()
    assert setter.returncode == 0, err
    assert "Traceback" not in err, err
    return {**json.loads(out), "released": released}


def test_a_sqlite_writer_waits_for_another_process_lock(
    locked_world: tuple[str, str, str, int],
) -> None:
    db_url, store, ref, vector_id = locked_world
    env = {**os.environ, "CRX_ACTOR": "waiter"}
    env.pop("CRX_SQLITE_BUSY_TIMEOUT_MS", None)
    result = _run_setter(db_url, store, ref, vector_id, 2.0, env)
    assert result["ok"], result
    # It waited for the lock instead of failing, and finished once the lock was let go.
    assert result["waited"] >= 1.5, result
    assert result["t1"] >= result["released"], result
    with Registry(db_url, store) as registry:
        alias = registry.get_alias("busy@staging", "tiny")
        assert (alias.vector_id, alias.actor) == (vector_id, "waiter")


def test_a_sqlite_writer_blocked_past_its_timeout_fails_with_one_clear_error(
    locked_world: tuple[str, str, str, int], tmp_path: Path
) -> None:
    db_url, store, ref, vector_id = locked_world
    env = {**os.environ, "CRX_SQLITE_BUSY_TIMEOUT_MS": "300"}
    result = _run_setter(db_url, store, ref, vector_id, 1.5, env)
    assert not result["ok"], result
    assert result["error"] == "DatabaseUnavailable", result
    # It gave up at its own timeout, while the lock was still held.
    assert result["waited"] >= 0.25, result
    assert result["t1"] < result["released"], result
    assert "database is locked" in result["message"], result
    assert "300 ms" in result["message"]
    assert "CRX_SQLITE_BUSY_TIMEOUT_MS" in result["message"]

    # The CLI says it in one line, and the registry is as it was.
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"positive": "kind", "negative": "cruel"}) + "\n")
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        command = ["register", "concept", "late", "--pairs", str(pairs)]
        cli = subprocess.run(
            [sys.executable, "-m", "crx", "--db", db_url, "--store", store, *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cli.returncode == 1, cli
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1, cli.stderr
    assert lines[0].startswith("Error: "), cli.stderr
    assert "database is locked" in lines[0]
    assert "CRX_SQLITE_BUSY_TIMEOUT_MS" in lines[0]
    with Registry(db_url, store) as registry:
        assert [c.name for c in registry.list_concepts().items] == ["busy"]
        assert registry.list_aliases() == []


@pytest.mark.parametrize("value", ["soon", "-1", "1e3", "99999999999"])
def test_a_bad_busy_timeout_is_refused_with_its_name(
    value: str, locked_world: tuple[str, str, str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    db_url, store, _, _ = locked_world
    monkeypatch.setenv("CRX_SQLITE_BUSY_TIMEOUT_MS", value)
    with pytest.raises(InvalidInput, match="CRX_SQLITE_BUSY_TIMEOUT_MS") as caught:
        Registry(db_url, store).list_concepts()
    assert repr(value) in str(caught.value)
    assert not isinstance(caught.value, DatabaseUnavailable)
