"""``crx serve`` under load: 50 concurrent clients for 30 s on loopback, per-route latency.

The catalogue is `plan_bench`'s (1,000 models, 10,000 concepts, 100,000 vectors, 50,000 maps,
40,000 evaluations, 171,000 audit events, 30,000 aliases, 1,655 deprecations; SQLite), built
once by `plan_bench.cached_catalogue` and cached under ``--cache`` (a rerun starts in seconds).
Then, for each ``--workers`` count, a real ``python -m crx --db ... --store ... serve --port P
--workers N`` process is started, warmed up, and driven for ``--seconds`` by ``--clients``
concurrent clients in this process (asyncio + httpx, one keep-alive connection each; the
server is a separate process, so the CPU time of each side is measured apart). Each client
sends the three routes in turn, without pause (``--think 0``: a closed loop, the server's
saturation) or with a random pause of mean ``--think`` seconds between requests:

* ``page``: ``--page-path`` with ``{model}`` replaced by a random model name
  (default ``/models/{model}``, the HTML page; ``/api/models/{model}`` until pages exist);
* ``plan``: ``/api/plan?target=T&concept=C1&concept=C2&concept=C3``, alternately three
  concepts with ``prod`` on T and three with a route of maps into T;
* ``audit``: ``/api/audit?...&limit=50``, alternately one vector's events
  (``object=vector:ID``) and one actor's since a date (``actor=...&since=...``).

Any status but 2xx, and any exception (a timeout, a dropped connection), is an error.

    .venv/bin/python benchmarks/serve_load.py --page-path '/api/models/{model}' \\
        --workers 1,2 --out benchmarks/results/serve_load.json
    .venv/bin/python benchmarks/serve_load.py --quick --seconds 5     # 1/10 scale
    .venv/bin/python benchmarks/serve_load.py --render benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.servers import _wait_for_port, free_port  # noqa: E402

ROUTES = ("page", "plan", "audit")
GOALS_P95_MS = {"page": 200.0, "plan": 50.0}  # the targets (audit: none given)
Draw = Callable[[random.Random], str]  # a request path for one route


# -- the server --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants (the uvicorn workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:  # it just exited
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        pending += [int(c) for c in children]
    return total


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    command: list[str]


@contextmanager
def serve(db: str, store: str, folder: Path, workers: int) -> Iterator[Server]:
    """A ``crx serve`` process on a free loopback port, stopped on exit."""
    port = free_port()
    command = [sys.executable, "-m", "crx", "--db", db, "--store", store, "serve",
               "--port", str(port), "--workers", str(workers)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRX_")}
    env.update(CRX_HOME=str(folder / "crx-home"), CRX_ACTOR="bench@serve")
    log = folder / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            _wait_for_port(port, 60, process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {log.read_text(errors='replace')}") from None
        yield Server(process, f"http://127.0.0.1:{port}", log, command)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the clients -------------------------------------------------------------------------


@dataclass
class Load:
    """What one run of the clients saw."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in ROUTES})
    errors: dict[str, int] = field(default_factory=lambda: {r: 0 for r in ROUTES})
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    client_cpu_s: float = 0.0


async def _clients(
    base_url: str, draws: dict[str, Draw], clients: int, seconds: float, think: float, seed: int
) -> Load:
    load = Load()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(30.0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as http:
        deadline = time.perf_counter() + seconds

        async def client(number: int) -> None:
            rng = random.Random(seed * 1000 + number)
            turn = number  # clients start on different routes
            if think:
                # Each client starts at a random point of its think cycle, as users arrive
                # over time (a load tool's ramp-up), not all in the run's first millisecond.
                await asyncio.sleep(rng.uniform(0, 2 * think))
            while time.perf_counter() < deadline:
                route = ROUTES[turn % len(ROUTES)]
                turn += 1
                path = draws[route](rng)
                started = time.perf_counter()
                try:
                    response = await http.get(path)
                    await response.aread()
                    ok = 200 <= response.status_code < 300
                    problem = f"{response.status_code} {response.text[:200]}"
                except Exception as exc:  # any failure of the request is an error, counted
                    ok, problem = False, f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - started
                if ok:
                    load.latencies[route].append(elapsed)
                else:
                    load.errors[route] += 1
                    if len(load.error_samples) < 10:
                        load.error_samples.append(f"GET {path}: {problem}")
                if think:
                    await asyncio.sleep(rng.uniform(0, 2 * think))

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        load.seconds = time.perf_counter() - started
        load.client_cpu_s = time.process_time() - cpu
    return load


def drive(
    base_url: str,
    draws: dict[str, Draw],
    clients: int,
    seconds: float,
    think: float = 0.0,
    seed: int = 0,
) -> Load:
    """``clients`` concurrent clients for ``seconds``, each sending the routes in turn."""
    return asyncio.run(_clients(base_url, draws, clients, seconds, think, seed))


def latency(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds) * 1e3
    return {
        "n": len(seconds),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
        "mean_ms": round(float(ms.mean()), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def measure(
    db: str,
    store: str,
    folder: Path,
    draws: dict[str, Draw],
    *,
    workers: int,
    clients: int,
    seconds: float,
    think: float = 0.0,
    warmup: float = 2.0,
) -> dict[str, Any]:
    """Start a server, warm it up, drive it; the run's record (latencies in ms)."""
    with serve(db, store, folder, workers) as server:
        # Warm-up (not recorded): imports, connections, SQLite's page cache, every worker.
        drive(server.url, draws, clients, warmup, seed=99)
        loadavg_start = [round(x, 2) for x in os.getloadavg()]
        server_cpu = cpu_seconds(server.process.pid)
        load = drive(server.url, draws, clients, seconds, think)
        server_cpu = cpu_seconds(server.process.pid) - server_cpu
        loadavg_end = [round(x, 2) for x in os.getloadavg()]
    # What the server said beyond its access lines (a failed request may show there).
    log_lines = server.log.read_text(errors="replace").splitlines()
    server_notes = [line for line in log_lines if '" 200' not in line][-20:]
    requests = sum(len(v) for v in load.latencies.values()) + sum(load.errors.values())
    return {
        "workers": workers,
        "clients": clients,
        "think_s": think,
        "seconds": round(load.seconds, 2),
        "requests": requests,
        "errors": sum(load.errors.values()),
        "errors_by_route": load.errors,
        "error_samples": load.error_samples,
        "server_log_not_200": server_notes,
        "throughput_rps": round(requests / load.seconds, 1),
        "client_cpu_s": round(load.client_cpu_s, 2),
        "server_cpu_s": round(server_cpu, 2),
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "routes": {route: latency(load.latencies[route]) for route in ROUTES},
        "server_command": " ".join(["python", *server.command[1:]]),
    }


# -- the catalogue's requests ------------------------------------------------------------


def catalogue_draws(
    scale: dict[str, int], prod_on: dict[int, list[str]], page: str
) -> dict[str, Draw]:
    """Request paths for `plan_bench`'s catalogue: objects that exist there (see its docs)."""
    from plan_bench import routed_concepts

    aliased = sorted(m for m, names in prod_on.items() if len(names) >= 3)
    n_vectors, models = scale["vectors"], scale["models"]

    def model(rng: random.Random) -> str:
        return f"model-{rng.randint(1, models):04d}"

    def page_path(rng: random.Random) -> str:
        return page.replace("{model}", model(rng))

    def plan(rng: random.Random) -> str:
        if rng.random() < 0.5:
            m = rng.choice(aliased)
            target, concepts = f"model-{m:04d}", rng.sample(prod_on[m], 3)
        else:
            target, concepts = routed_concepts(rng, scale)
        return "/api/plan?" + urlencode([("target", target), *(("concept", c) for c in concepts)])

    def audit(rng: random.Random) -> str:
        if rng.random() < 0.5:
            query = {"object": f"vector:{rng.randint(1, n_vectors)}"}
        else:
            query = {"actor": "bench@loader", "since": "2000-01-01"}
        return "/api/audit?" + urlencode({**query, "limit": 50})

    return {"page": page_path, "plan": plan, "audit": audit}


# -- the report --------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    lines = [
        f"crx serve under load: {report['clients']} clients, {report['seconds']} s per run, "
        f"page {report['page_path']} (HTML: {report['page_is_html']}), "
        f"{report['machine']['cpus']} CPUs",
        "",
        "| workers | think | route | n | p50 ms | p95 ms | p99 ms | goal p95 | met? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        for route in ROUTES:
            r = run["routes"][route]
            goal = GOALS_P95_MS.get(route)
            met = (
                "–" if goal is None or not r["n"] else ("yes" if r["p95_ms"] <= goal else "**no**")
            )
            lines.append(
                f"| {run['workers']} | {run['think_s']} s | {route} | {r['n']} | "
                f"{r.get('p50_ms', '–')} | {r.get('p95_ms', '–')} | {r.get('p99_ms', '–')} | "
                f"{f'≤ {goal:g} ms' if goal else '–'} | {met} |"
            )
    lines += ["", "| workers | think | requests | errors | req/s | server CPU s | client CPU s "
              "| load avg (1 min) start → end |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in report["runs"]:
        lines.append(
            f"| {run['workers']} | {run['think_s']} s | {run['requests']} | {run['errors']} | "
            f"{run['throughput_rps']} | {run['server_cpu_s']} | {run['client_cpu_s']} | "
            f"{run['loadavg_start'][0]} → {run['loadavg_end'][0]} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the catalogue at 1/10 scale")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to run")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0, help="per run")
    parser.add_argument(
        "--think", default="0", help="comma-separated mean pauses between a client's requests (s)"
    )
    parser.add_argument(
        "--page-path", default="/models/{model}", help="the page route; {model} is a model name"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crx-bench",
        help="where the built catalogue is kept",
    )
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--render", type=Path, help="print the tables of a report and stop")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    from catalog_bench import git_commit, machine
    from plan_bench import SCALES, cached_catalogue

    label = "quick" if args.quick else "full"
    started = time.perf_counter()
    db_file, built = cached_catalogue(label, args.cache)
    print(f"catalogue {db_file} ready in {time.perf_counter() - started:.1f} s", flush=True)
    scale = SCALES[label]
    draws = catalogue_draws(scale, built.prod_on, args.page_path)
    db, store = f"sqlite:///{db_file}", str(db_file.parent / "store")
    probe = draws["page"](random.Random(0))
    runs = []
    with tempfile.TemporaryDirectory(prefix="crx-serve-load-") as tmp:
        with serve(db, store, Path(tmp), 1) as server:
            answer = httpx.get(server.url + probe, timeout=30)
            answer.raise_for_status()
            page_is_html = answer.headers.get("content-type", "").startswith("text/html")
        for workers in [int(w) for w in args.workers.split(",")]:
            for think in [float(t) for t in args.think.split(",")]:
                print(f"workers {workers}, think {think} s: {args.seconds} s ...", flush=True)
                run = measure(db, store, Path(tmp), draws, workers=workers,
                              clients=args.clients, seconds=args.seconds, think=think)  # fmt: skip
                print(json.dumps(run, indent=2), flush=True)
                runs.append(run)
    report = {
        "benchmark": "serve_load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "git_commit": git_commit(),
        "machine": machine(),
        "catalogue": {
            "scale": label,
            **scale,
            "rows": built.load["rows"],
            "governance": built.governance,
            "database": "SQLite",
        },
        "clients": args.clients,
        "seconds": args.seconds,
        "page_path": args.page_path,
        "page_is_html": page_is_html,
        "goals_p95_ms": GOALS_P95_MS,
        "runs": runs,
    }
    print(render(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
