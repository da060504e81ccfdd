"""Store throughput: crx's content-addressed put/get against a raw fsspec copy of the same bytes.

For float32 tensors of 1, 4, 16 and 64 MiB on each backend (a local folder, ``memory://`` and,
with ``--s3``, moto's S3 server on loopback, which is not a real S3), interleaved in one run:

* ours, put:  ``ObjectStore.put(tensors.encode({"t": array}))`` (safetensors encoding, sha256,
  existence check, and on a local disk temp file + fsync + read-only + rename);
* raw, put:   ``fs.pipe_file(fresh_path, data)`` with the same encoded bytes (no hash, no fsync);
* ours, get:  ``tensors.decode(ObjectStore.get(oid))`` (read, sha256 verification, decoding);
* raw, get:   ``fs.cat_file(path)``.

Each repetition writes a fresh tensor (one element changes, outside the timings), so every put
really writes; which side goes first alternates between repetitions. On a local disk every
put starts after an ``os.sync()`` (not timed), so our fsync never flushes the raw side's pages.
Reported: medians, MB/s and the ratio ours/raw of throughput (= raw time / our time; goal
>= 0.8). The "store only" ratios leave out safetensors encoding and decoding; "vs
raw+sha256" compares the store-only time with the raw copy plus one sha256 of the bytes, the
least any sha256-addressed store must do. The local backend also gets a breakdown of the steps
of a put and a get, timed one by one on fresh files.

    .venv/bin/python benchmarks/store_bench.py --s3 --out benchmarks/results/store.json
    .venv/bin/python benchmarks/store_bench.py --quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crx.registry.store import ObjectStore, tensors  # noqa: E402

MIB = 1 << 20
SIZES_MB = [1, 4, 16, 64]
REPS = {1: 15, 4: 11, 16: 9, 64: 7}
QUICK_REPS = {1: 5, 4: 5, 16: 3, 64: 3}


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 3)


def tensor_of(size_mb: int) -> np.ndarray:
    rows = size_mb * MIB // (4 * 1024)
    return np.random.default_rng(size_mb).standard_normal((rows, 1024), dtype=np.float32)


def compare(ours: list[float], raw: list[float], nbytes: int) -> dict[str, float]:
    ours_ms, raw_ms = median_ms(ours), median_ms(raw)
    return {
        "ours_ms": ours_ms,
        "raw_ms": raw_ms,
        "ours_MBps": round(nbytes / MIB / (ours_ms / 1e3), 1),
        "raw_MBps": round(nbytes / MIB / (raw_ms / 1e3), 1),
        "ratio": round(raw_ms / ours_ms, 3),
    }


def settle(store: ObjectStore) -> None:
    """On a local disk, flush dirty pages first, so a put's fsync never pays for other writes."""
    if store.is_local:
        os.sync()


def ours_put(store: ObjectStore, array: np.ndarray) -> tuple[float, float, str]:
    """(encode seconds, put seconds, oid)."""
    settle(store)
    start = time.perf_counter()
    encoded = tensors.encode({"t": array})
    encoded_at = time.perf_counter()
    oid = store.put(encoded)
    return encoded_at - start, time.perf_counter() - encoded_at, oid


def ours_get(store: ObjectStore, oid: str) -> tuple[float, float, dict[str, np.ndarray]]:
    """(get seconds, decode seconds, tensors)."""
    start = time.perf_counter()
    blob = store.get(oid)
    read_at = time.perf_counter()
    decoded = tensors.decode(blob)
    return read_at - start, time.perf_counter() - read_at, decoded


def raw_put(store: ObjectStore, path: str, data: bytes) -> float:
    settle(store)
    start = time.perf_counter()
    store.fs.pipe_file(path, data)
    return time.perf_counter() - start


def raw_get(store: ObjectStore, path: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    blob = store.fs.cat_file(path)
    return time.perf_counter() - start, blob


def bench_size(store: ObjectStore, raw_root: str, size_mb: int, reps: int) -> dict[str, Any]:
    """Interleaved put/get, ours against raw, ``reps`` timed repetitions after one warm-up."""
    array = tensor_of(size_mb)
    samples: dict[str, list[float]] = {
        k: [] for k in ("encode", "put", "raw_put", "get", "decode", "raw_get", "sha256")
    }
    nbytes = 0
    for rep in range(reps + 1):
        array[0, 0] = rep + 0.5  # a fresh tensor, so a fresh oid: every put really writes
        data = tensors.encode({"t": array})  # the raw side's bytes (ours encodes again, timed)
        nbytes = len(data)
        raw_path = f"{raw_root}/{uuid.uuid4().hex}"
        if rep % 2 == 0:  # alternate which side goes first
            t_encode, t_put, oid = ours_put(store, array)
            t_raw_put = raw_put(store, raw_path, data)
            t_get, t_decode, decoded = ours_get(store, oid)
            t_raw_get, blob = raw_get(store, raw_path)
        else:
            t_raw_put = raw_put(store, raw_path, data)
            t_encode, t_put, oid = ours_put(store, array)
            t_raw_get, blob = raw_get(store, raw_path)
            t_get, t_decode, decoded = ours_get(store, oid)
        start = time.perf_counter()
        digest = hashlib.sha256(data).hexdigest()
        t_sha256 = time.perf_counter() - start
        assert oid == digest
        assert blob == data
        assert decoded["t"][0, 0] == array[0, 0]
        if rep:  # the first round is a warm-up
            for key, value in (
                ("encode", t_encode), ("put", t_put), ("raw_put", t_raw_put),
                ("get", t_get), ("decode", t_decode), ("raw_get", t_raw_get),
                ("sha256", t_sha256),
            ):  # fmt: skip
                samples[key].append(value)
        store.remove(oid)
        store.fs.rm_file(raw_path)
    encode_put = [e + p for e, p in zip(samples["encode"], samples["put"], strict=True)]
    get_decode = [g + d for g, d in zip(samples["get"], samples["decode"], strict=True)]
    # What any sha256-addressed store must pay at least: the raw copy plus hashing the bytes.
    hashed_put = [r + h for r, h in zip(samples["raw_put"], samples["sha256"], strict=True)]
    hashed_get = [r + h for r, h in zip(samples["raw_get"], samples["sha256"], strict=True)]
    return {
        "bytes": nbytes,
        "reps": reps,
        "put": compare(encode_put, samples["raw_put"], nbytes),
        "get": compare(get_decode, samples["raw_get"], nbytes),
        "put_store_only": compare(samples["put"], samples["raw_put"], nbytes),
        "get_store_only": compare(samples["get"], samples["raw_get"], nbytes),
        "put_vs_raw_plus_sha256": compare(samples["put"], hashed_put, nbytes),
        "get_vs_raw_plus_sha256": compare(samples["get"], hashed_get, nbytes),
        "encode_ms": median_ms(samples["encode"]),
        "decode_ms": median_ms(samples["decode"]),
        "sha256_ms": median_ms(samples["sha256"]),
    }


def local_breakdown(root: Path, size_mb: int, reps: int) -> dict[str, float]:
    """The steps of a local put and get, one by one, on fresh files (medians, ms).

    The put steps replay ``ObjectStore._put_local``: sha256, mkstemp in the final folder,
    write + flush, fsync, chmod 0444 + rename.
    """
    array = tensor_of(size_mb)
    store = ObjectStore(str(root / "store"))
    store.create()
    steps: dict[str, list[float]] = {}
    for rep in range(reps + 1):
        array[0, 0] = -(rep + 0.5)
        data = tensors.encode({"t": array})
        settle(store)
        marks = [("start", time.perf_counter())]
        oid = hashlib.sha256(data).hexdigest()
        marks.append(("sha256", time.perf_counter()))
        final = Path(store.path(oid))
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        marks.append(("mkdir_mkstemp", time.perf_counter()))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            marks.append(("write", time.perf_counter()))
            os.fsync(handle.fileno())
            marks.append(("fsync", time.perf_counter()))
        os.chmod(temp, 0o444)
        os.replace(temp, final)
        marks.append(("chmod_rename", time.perf_counter()))
        raw_path = root / f"raw-{uuid.uuid4().hex}"
        settle(store)
        marks.append(("sync_not_counted", time.perf_counter()))
        store.fs.pipe_file(str(raw_path), data)
        marks.append(("raw_pipe_file", time.perf_counter()))
        store.fs.cat_file(str(raw_path))
        marks.append(("raw_cat_file", time.perf_counter()))
        final.read_bytes()
        marks.append(("read", time.perf_counter()))
        store.get(oid, verify=False)
        marks.append(("get_verify_false", time.perf_counter()))
        blob = store.get(oid)
        marks.append(("get_verify_true", time.perf_counter()))
        tensors.decode(blob)
        marks.append(("decode", time.perf_counter()))
        if rep:
            for (_, before), (name, after) in pairwise(marks):
                if name != "sync_not_counted":
                    steps.setdefault(name, []).append(after - before)
        store.remove(oid)
        raw_path.unlink()
    return {f"{key}_ms": median_ms(values) for key, values in steps.items()}


def git_commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    memory = Path("/proc/meminfo").read_text().split("\n", 1)[0].split(":", 1)[1].strip()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "sha_ni": " sha_ni" in flags,
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def hash_speed() -> float:
    data = os.urandom(64 * MIB)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        hashlib.sha256(data).digest()
        best = min(best, time.perf_counter() - start)
    return round(64 / best, 1)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| backend | size | put ours / raw (MB/s) | put ratio | put ratio, store only "
        "| put vs raw+sha256 | get ours / raw (MB/s) | get ratio | get ratio, store only "
        "| get vs raw+sha256 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, sizes in report["backends"].items():
        for size, r in sizes.items():
            if not size.endswith("MB"):
                continue
            lines.append(
                f"| {backend} | {size} | {r['put']['ours_MBps']:.0f} / {r['put']['raw_MBps']:.0f}"
                f" | {r['put']['ratio']:.2f} | {r['put_store_only']['ratio']:.2f}"
                f" | {r['put_vs_raw_plus_sha256']['ratio']:.2f}"
                f" | {r['get']['ours_MBps']:.0f} / {r['get']['raw_MBps']:.0f}"
                f" | {r['get']['ratio']:.2f} | {r['get_store_only']['ratio']:.2f}"
                f" | {r['get_vs_raw_plus_sha256']['ratio']:.2f} |"
            )
    breakdown = report["backends"].get("file", {}).get("breakdown")
    if breakdown:
        steps = list(next(iter(breakdown.values())))
        names = [step.removesuffix("_ms") for step in steps]
        lines += ["", "| local, ms | " + " | ".join(names) + " |", "|---" * (len(steps) + 1) + "|"]
        for size, values in breakdown.items():
            lines.append(f"| {size} | " + " | ".join(f"{values[s]:.1f}" for s in steps) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--s3", action="store_true", help="also moto's S3 server on loopback")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only print the tables of a results file"
    )
    args = parser.parse_args()
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return
    reps = QUICK_REPS if args.quick else REPS

    # A plain `kill` should still stop the moto server and remove the work folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="crx-store-bench-"))
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "store",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "sha256_MBps": hash_speed(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "backends": {},
    }
    moto = None
    try:
        backends: list[tuple[str, str, str]] = [
            ("file", str(workdir / "store"), str(workdir / "raw")),
            ("memory", f"memory://crx-bench-{uuid.uuid4().hex}/store", "/crx-bench-raw"),
        ]
        if args.s3:
            from tests.servers import MotoServer

            moto = MotoServer.start()
            os.environ.update(moto.environment())
            bucket = f"crx-bench-{uuid.uuid4().hex[:12]}"
            backends.append(("s3-moto", f"s3://{bucket}/store", f"{bucket}/raw"))
        for label, url, raw_root in backends:
            store = ObjectStore(url)
            store.create()
            if label == "file":
                Path(raw_root).mkdir()
            elif label == "memory":
                store.fs.makedirs(raw_root, exist_ok=True)
            results: dict[str, Any] = {}
            for size in SIZES_MB:
                print(f"[{label}] {size} MiB x {reps[size]} ...", flush=True)
                results[f"{size}MB"] = bench_size(store, raw_root, size, reps[size])
            if label == "file":
                results["breakdown"] = {}
                for size in SIZES_MB:
                    print(f"[{label}] breakdown {size} MiB ...", flush=True)
                    results["breakdown"][f"{size}MB"] = local_breakdown(
                        workdir / f"breakdown-{size}", size, reps[size]
                    )
            report["backends"][label] = results
    finally:
        if moto is not None:
            moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(markdown(report))
    print(f"\nsha256: {report['sha256_MBps']} MB/s; total {report['total_seconds']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
