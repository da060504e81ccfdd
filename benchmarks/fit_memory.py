"""Peak memory of ``crx fit``: the code before per-layer state shards vs now, on one machine.

Each measurement is one ``python -m crx fit --source S --target T --pairs P --force -q --json``
subprocess; its peak resident set is ``ru_maxrss`` from ``os.wait4`` (the child alone). Per model
pair, in this order (old and new alternate so both meet the same machine load):

1. ``scratch, auto``: no corpus states cached: both models are loaded and captured, then the
   all-layer sweep (``auto``, the default); this run leaves the cache for step 2;
2. ``cached, auto``: the same fit from the states step 1 cached (no model is loaded);
3. ``cached, one pair``: ``--pairs LS:LT`` from the same cache;
4. ``scratch, one pair``: ``--pairs LS:LT`` with nothing cached (the old code captures every
   block; the new one only LS and LT, each pass stopping after that block).

Every run starts from a copy of the same registry (``--home``: a ``CRX_HOME`` with both models
registered; nothing is written there) in a temporary folder. The maps' content-addressed oids of
old and new are compared per layer pair: equal oids are bit-identical weights and biases.

"old" is the crx found under ``--old DIR`` (``DIR/crx``, e.g. a worktree of main at the commit
before this change: ``git worktree add --detach DIR/crx c9dc799``); "new" is the crx this
interpreter imports. Both run with ``OMP_NUM_THREADS=1`` (steadier timings on a shared machine;
memory does not depend on it).

Reproduce (writes ``benchmarks/results/fit_memory.json``; ~25 min for SmolLM2 → Gemma-3, ~1 h
for Qwen 0.5B → 1.5B on 2 cores):

    git worktree add --detach /tmp/crx-old/crx c9dc799
    .venv/bin/python benchmarks/fit_memory.py --old /tmp/crx-old --home "$CRX_HOME" \\
        --pair smollm2-135m-instruct:gemma3-270m:22:13 \\
        --pair qwen2.5-coder-0.5b-instruct:qwen2.5-coder-1.5b-instruct:17:20

``--render FILE.json`` prints the table of a results file again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NEW: Path | None = None  # --new: a folder holding the new code as crx/ (default: this one's)
STEPS = (("scratch", "auto"), ("cached", "auto"), ("cached", "pair"), ("scratch", "pair"))


def base_home(home: Path, where: Path) -> Path:
    """A copy of ``home``'s registry and store, upgraded to the new code's schema once."""
    base = Path(tempfile.mkdtemp(prefix="base-", dir=where))
    shutil.copy2(home / "registry.db", base / "registry.db")
    if (home / "store").is_dir():
        shutil.copytree(home / "store", base / "store")
    env = dict(os.environ, CRX_HOME=str(base))
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-m", "crx", "db", "upgrade"], env=env, check=True)
    return base


def fresh_home(registry: Path, cache_from: Path | None, where: Path) -> Path:
    """A CRX_HOME with a copy of the registry and store, and optionally of a states cache."""
    home = Path(tempfile.mkdtemp(dir=where))
    shutil.copy2(registry / "registry.db", home / "registry.db")
    if (registry / "store").is_dir():
        shutil.copytree(registry / "store", home / "store")
    (home / "cache").mkdir()
    if cache_from is not None:
        # hard links: both versions replace cache files by rename, never write into them
        shutil.copytree(
            cache_from / "cache" / "states", home / "cache" / "states", copy_function=os.link
        )
    return home


def synthetic_caches(registry: Path, where: Path, models: tuple[str, ...]) -> dict[str, Path]:
    """Homes whose caches hold random states of the models' shapes on the default corpus: the
    old single file for "old", per-layer shards for "new" (the same numbers in both).

    For a fit from cached states of a pair too slow to capture here; the memory and time of a fit
    from the cache do not depend on the values.
    """
    import numpy as np

    from crx import Registry
    from crx.registry.store.objects import sha256_hex
    from crx.registry.workflows.corpus import _states_path, load_corpus, states_folder
    from crx.registry.workflows.states import ShardWriter

    lines, raw = load_corpus(None)
    oid, n = sha256_hex(raw), len(lines)
    homes = {code: fresh_home(registry, None, where) for code in ("old", "new")}
    saved = os.environ.get("CRX_HOME")
    rng = np.random.default_rng(0)
    try:
        for name in models:
            os.environ["CRX_HOME"] = str(homes["old"])
            reg = Registry()
            record = reg.get_model(name)
            reg.close()
            from safetensors.numpy import save_file

            shape = (n, record.n_layers, record.d_model)
            # a residual stream's large per-dimension offset, then unit noise
            states = rng.standard_normal(shape, dtype=np.float32)
            states += rng.normal(scale=4.0, size=(1, record.n_layers, record.d_model)).astype(
                np.float32
            )
            legacy = _states_path(record, oid)
            legacy.parent.mkdir(parents=True, exist_ok=True)
            save_file({"states": states}, str(legacy))
            os.environ["CRX_HOME"] = str(homes["new"])
            folder = states_folder(record, oid)
            folder.mkdir(parents=True, exist_ok=True)
            for layer in range(record.n_layers):
                writer = ShardWriter(folder, layer, n, record.d_model)
                writer.write(range(n), states[:, layer])
                writer.commit()
            del states
    finally:
        if saved is None:
            os.environ.pop("CRX_HOME", None)
        else:
            os.environ["CRX_HOME"] = saved
    return homes


def run_fit(
    code: str, old: Path, home: Path, source: str, target: str, pairs: str, corpus: Path | None
) -> dict[str, Any]:
    env = dict(os.environ, CRX_HOME=str(home), OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    if code == "old":
        env["PYTHONPATH"] = str(old)
    elif NEW is not None:
        env["PYTHONPATH"] = str(NEW)
    cmd = [sys.executable, "-m", "crx", "fit", "--source", source, "--target", target]
    cmd += ["--pairs", pairs, "--force", "-q", "--json"]
    cmd += [] if corpus is None else ["--corpus", str(corpus)]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{code} fit {source} -> {target} {pairs} failed:\n{stderr[-2000:]}")
    items = json.loads(stdout)["items"]
    return {
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "maps": {f"{m['source_layer']}:{m['target_layer']}": m["oid"] for m in items},
        "r2": {f"{m['source_layer']}:{m['target_layer']}": m["r2"] for m in items},
    }


def measure(
    spec: str,
    old: Path,
    registry: Path,
    where: Path,
    steps: list[tuple[str, str]],
    corpus: Path | None,
    synthetic: bool = False,
) -> dict[str, Any]:
    source, target, ls, lt = spec.split(":")
    pair = f"{ls}:{lt}"
    caches = synthetic_caches(registry, where, (source, target)) if synthetic else {}
    rows: list[dict[str, Any]] = []
    for states, pairs in steps:
        for code in ("old", "new"):
            cache = caches.get(code) if states == "cached" else None
            if states == "cached" and cache is None:
                raise SystemExit("a cached step needs the scratch auto step before it")
            home = fresh_home(registry, cache, where)
            wanted = "auto" if pairs == "auto" else pair
            result = run_fit(code, old, home, source, target, wanted, corpus)
            if states == "scratch" and pairs == "auto":
                caches[code] = home  # kept: the cached steps start from its states
            else:
                shutil.rmtree(home)
            rows.append(
                {
                    "code": code,
                    "states": states,
                    "pairs": pairs if pairs == "auto" else pair,
                    **result,
                }
            )
            print(
                f"{source} -> {target} {code:3} {states:7} {rows[-1]['pairs']:5} "
                f"{result['peak_rss_mib']:8.1f} MiB {result['wall_s']:7.1f} s",
                flush=True,
            )
    for home in caches.values():
        shutil.rmtree(home)
    return {"source": source, "target": target, "pair": pair, "runs": rows, **compare(rows)}


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per step: new/old peak, and whether the maps are the same (oids, R²)."""
    out: dict[str, Any] = {"ratio_new_over_old": {}, "same_oids": {}, "max_abs_r2_diff": {}}
    for states, pairs in {(r["states"], r["pairs"]) for r in rows}:
        old = next(
            r for r in rows if (r["code"], r["states"], r["pairs"]) == ("old", states, pairs)
        )
        new = next(
            r for r in rows if (r["code"], r["states"], r["pairs"]) == ("new", states, pairs)
        )
        key = f"{states} {pairs}"
        out["ratio_new_over_old"][key] = round(new["peak_rss_mib"] / old["peak_rss_mib"], 3)
        out["same_oids"][key] = old["maps"] == new["maps"]
        out["max_abs_r2_diff"][key] = max(abs(old["r2"][k] - new["r2"][k]) for k in old["r2"])
    return out


def render(results: dict[str, Any]) -> None:
    print(f"machine: {results['machine']}")
    for pair in results["pairs"]:
        states = f"{pair.get('corpus_lines', 2000)} lines, {pair.get('states', 'real')} states"
        print(f"\n{pair['source']} -> {pair['target']} ({states})")
        print(
            "| states | pairs | old peak RSS | new peak RSS | new/old | old s | new s | same oids |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---|")
        for states, pairs in STEPS:
            p = pair["pair"] if pairs == "pair" else "auto"
            sel = [r for r in pair["runs"] if (r["states"], r["pairs"]) == (states, p)]
            if len(sel) != 2:
                continue
            old, new = sorted(sel, key=lambda r: r["code"] != "old")
            key = f"{states} {p}"
            peaks = f"{old['peak_rss_mib']:.0f} MiB | {new['peak_rss_mib']:.0f} MiB"
            ratio = pair["ratio_new_over_old"][key]
            times = f"{old['wall_s']:.0f} | {new['wall_s']:.0f}"
            print(
                f"| {states} | {p} | {peaks} | {ratio:.2f} | {times} | {pair['same_oids'][key]} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, help="a folder holding the old code as crx/")
    ap.add_argument(
        "--new", type=Path, help="a folder holding the new code as crx/ (default: ours)"
    )
    ap.add_argument(
        "--home",
        type=Path,
        action="append",
        default=[],
        help="CRX_HOME with the models registered (only read); one per --pair, or one for all",
    )
    ap.add_argument("--pair", action="append", default=[], help="SOURCE:TARGET:LS:LT")
    ap.add_argument(
        "--steps", default="all", help="all, or a comma list like 'scratch auto,cached auto'"
    )
    ap.add_argument("--work", type=Path, default=None, help="where the temporary homes go")
    ap.add_argument(
        "--lines",
        type=int,
        default=None,
        help="fit on the first N lines of the default corpus (default: all 2,000)",
    )
    ap.add_argument("--merge", action="store_true", help="add to the pairs already in --out")
    ap.add_argument(
        "--synthetic",
        action="store_true",
        help="cached steps only, from random states of the models' shapes (no capture)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fit_memory.json")
    ap.add_argument("--render", type=Path)
    args = ap.parse_args()
    if args.render:
        render(json.loads(args.render.read_text()))
        return
    if args.old is None or not args.home or not args.pair:
        ap.error("--old, --home and at least one --pair are needed")
    if len(args.home) not in (1, len(args.pair)):
        ap.error("give one --home, or one per --pair")
    homes = args.home * len(args.pair) if len(args.home) == 1 else args.home
    steps = (
        list(STEPS) if args.steps == "all" else [tuple(s.split()) for s in args.steps.split(",")]
    )
    if args.synthetic and any(states == "scratch" for states, _ in steps):
        ap.error("--synthetic measures cached steps only: give --steps 'cached auto,cached pair'")
    where = Path(tempfile.mkdtemp(prefix="fit-memory-", dir=args.work))
    global NEW
    NEW = args.new
    import crx

    results: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "omp_num_threads": 1,
            "loadavg_start": os.getloadavg()[0],
        },
        "old_code": str(args.old / "crx"),
        "new_code": str(args.new / "crx") if args.new else str(Path(crx.__file__).parent),
        "pairs": [],
    }
    corpus = None
    if args.lines is not None:
        from crx.registry.workflows.corpus import load_corpus

        corpus = where / "corpus.txt"
        corpus.write_text("\n".join(load_corpus(None)[0][: args.lines]) + "\n", encoding="utf-8")
        results["corpus_lines"] = args.lines
    if args.merge and args.out.exists():
        earlier = json.loads(args.out.read_text())
        results["pairs"] = earlier["pairs"]
        results["earlier_runs"] = [
            {"command": earlier["command"], "machine": earlier["machine"]},
            *earlier.get("earlier_runs", []),
        ]
    try:
        for spec, home in zip(args.pair, homes, strict=True):
            base, load = base_home(home, where), os.getloadavg()[0]
            row = measure(spec, args.old, base, where, steps, corpus, args.synthetic)  # type: ignore[arg-type]
            row["corpus_lines"] = args.lines or 2000
            row["states"] = "synthetic (random, seed 0)" if args.synthetic else "real"
            row["loadavg_start_end"] = [load, os.getloadavg()[0]]
            results["pairs"].append(row)
            results["machine"]["loadavg_end"] = os.getloadavg()[0]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(
                json.dumps(results, indent=2) + "\n"
            )  # after each pair: a partial run keeps its results
    finally:
        shutil.rmtree(where, ignore_errors=True)
    render(results)


if __name__ == "__main__":
    main()
