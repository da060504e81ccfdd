"""Hub models are pinned: registering ``ORG/NAME`` records its commit and its files' hashes.

No hub is reachable here, so the hub is a local Hugging Face cache laid out as huggingface_hub
writes it (``models--org--tiny/refs/main`` holding a commit, ``snapshots/<commit>/`` the tiny
Llama's files) read with ``HF_HUB_OFFLINE=1``, which huggingface_hub resolves from the cache:
a branch through ``refs/``, a commit straight to ``snapshots/``. huggingface_hub reads both
variables when it is imported, so the CLI runs as ``python -m crx`` in a child process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from crx.registry import Registry
from tests.cli_world import World
from tests.tiny_models import PAIRS

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(tmp: Path, model_dir: Path) -> Path:
    cache = tmp / "hf-cache"
    repo = cache / "models--org--tiny"
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def _crx(w: World, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "crx", "--db", w.db, "--store", str(w.store), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=w.tmp,
        check=False,
        timeout=300,
    )


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_hub_id_is_pinned_to_its_commit_and_loads_checked(
    sqlite_world: World, model_dirs: dict[str, Path]
) -> None:
    w = sqlite_world
    cache = _hub_cache(w.tmp, model_dirs["llama"])
    snapshot = cache / "models--org--tiny" / "snapshots" / COMMIT

    done = _crx(w, cache, "register", "model", "hubby", "--path", "org/tiny", "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)["record"]
    assert record["path"] == "org/tiny"
    assert record["revision"] == COMMIT  # the commit main resolved to, not "main"
    config_bytes = (snapshot / "config.json").read_bytes()
    assert record["config_sha256"] == hashlib.sha256(config_bytes).hexdigest()
    with Registry(w.db, str(w.store)) as reg:
        local = reg.register_model("local", str(model_dirs["llama"])).record
        reg.register_concept("happiness", PAIRS)
    assert record["tokenizer_sha256"] == local.tokenizer_sha256 is not None

    # Loading asks for the recorded commit (offline: snapshots/<commit>) and gives the vector
    # of the same model loaded from its folder.
    hub = _crx(w, cache, "extract", "happiness", "--model", "hubby", "--json")
    assert hub.returncode == 0, hub.stderr
    with Registry(w.db, str(w.store)) as reg:
        native = reg.extract("happiness", "local").record
        hub_vector = reg.load_vector(json.loads(hub.stdout)["record"]["id"])
        np.testing.assert_allclose(hub_vector, reg.load_vector(native.id), rtol=1e-6, atol=1e-6)

    # A cache edited after registration is refused before anything loads.
    (snapshot / "config.json").write_bytes(config_bytes.replace(b"{", b"{\n", 1))
    line = _one_error(_crx(w, cache, "extract", "happiness", "--model", "hubby", "--force"))
    assert f"org/tiny at commit {COMMIT}: its config.json hash" in line, line
    assert "re-register" in line


def test_an_id_missing_from_the_offline_cache_names_hf_hub_offline(
    sqlite_world: World, model_dirs: dict[str, Path]
) -> None:
    w = sqlite_world
    cache = _hub_cache(w.tmp, model_dirs["llama"])
    line = _one_error(_crx(w, cache, "register", "model", "gone", "--path", "org/absent"))
    assert "HF_HUB_OFFLINE" in line, line
    assert "'org/absent'" in line
    with Registry(w.db, str(w.store)) as reg:
        assert reg.list_models(limit=0).items == []


def test_weights_missing_from_the_offline_cache_name_hf_hub_offline(
    sqlite_world: World, model_dirs: dict[str, Path]
) -> None:
    # Registration reads only the config and tokenizer; the weights are needed at load time.
    w = sqlite_world
    cache = _hub_cache(w.tmp, model_dirs["llama"])
    for weights in (cache / "models--org--tiny" / "snapshots" / COMMIT).glob("*.safetensors"):
        weights.unlink()
    assert _crx(w, cache, "register", "model", "hubby", "--path", "org/tiny").returncode == 0
    with Registry(w.db, str(w.store)) as reg:
        reg.register_concept("happiness", PAIRS)
    line = _one_error(_crx(w, cache, "extract", "happiness", "--model", "hubby"))
    assert line.startswith("Error: cannot load model hubby: "), line
    assert "HF_HUB_OFFLINE is set" in line, line
    with Registry(w.db, str(w.store)) as reg:
        assert reg.list_vectors(limit=0).items == []


def test_a_spec_s_branch_is_applied_as_its_commit_and_then_stands_for_it(
    sqlite_world: World, model_dirs: dict[str, Path]
) -> None:
    w = sqlite_world
    cache = _hub_cache(w.tmp, model_dirs["llama"])
    spec = w.tmp / "hub.yaml"
    spec.write_text("models:\n  - {name: hubby, path: org/tiny, revision: main}\n")
    applied = _crx(w, cache, "apply", str(spec))
    assert applied.returncode == 0, applied.stderr
    with Registry(w.db, str(w.store)) as reg:
        assert reg.get_model("hubby").revision == COMMIT  # pinned, not "main"
    # The label is not resolved again by a diff (which never reaches the hub): it stands for
    # the commit it was pinned to, so a second apply changes nothing ...
    again = _crx(w, cache, "diff", str(spec), "--json")
    assert again.returncode == 0, again.stderr
    [change] = json.loads(again.stdout)["changes"]
    assert change["action"] == "unchanged", change
    # ... while another commit named in the spec is a change of the revision.
    other = "f" * 40
    spec.write_text(f"models:\n  - {{name: hubby, path: org/tiny, revision: '{other}'}}\n")
    moved = _crx(w, cache, "diff", str(spec), "--json")
    [change] = json.loads(moved.stdout)["changes"]
    assert change["action"] == "update"
    assert change["changes"] == [{"field": "revision", "old": COMMIT, "new": other}]
