"""Corpus states cached one safetensors shard per layer (`crx.registry.workflows.states`).

On the tiny Llama (4 x 32) and GPT-2 (3 x 48) of `tests.tiny_models`: a fit captures and stores
only the layers it needs and a later fit only the missing ones; a shard reads back as
safetensors itself reads it; a killed capture never leaves a shard that reads as complete; the
lazy, sharded path gives the same maps (same oids) as the whole in-memory tensors of the old
path and as the single-file cache of earlier versions, which stays readable.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from crx import Registry
from crx.registry.engine.capture import residual_states
from crx.registry.engine.fit import fit_pairs
from crx.registry.engine.fit import fitting as fit_module
from crx.registry.store.tensors import encode_map
from crx.registry.workflows.corpus import (
    _states_path,
    cached_states,
    corpus_states,
    load_corpus,
    states_folder,
)
from crx.registry.workflows.states import CachedStates, ShardWriter, shard_name


def _pair(reg: Registry, model_dirs: dict[str, Path]) -> None:
    reg.register_model("src", str(model_dirs["llama"]))
    reg.register_model("tgt", str(model_dirs["gpt2"]))


def _shards(folder: Path) -> dict[str, tuple[int, int]]:
    """Complete shard name -> (inode, mtime in ns): a rewritten shard gets a new inode."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("layer-*.safetensors")
    }


def test_a_fit_stores_only_its_layers_and_a_later_fit_only_the_missing_ones(
    registry: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    _pair(registry, model_dirs)
    src, tgt = registry.get_model("src"), registry.get_model("tgt")
    registry.fit("src", "tgt", corpus=corpus_file, pairs="1:2,1:0")
    _, raw = load_corpus(corpus_file)
    oid = registry.store.put(raw)
    src_dir, tgt_dir = states_folder(src, oid), states_folder(tgt, oid)
    assert sorted(_shards(src_dir)) == [shard_name(1)]
    assert sorted(_shards(tgt_dir)) == [shard_name(0), shard_name(2)]
    assert not _states_path(src, oid).exists()  # no single-file cache any more
    before = {**_shards(src_dir), **{"t" + k: v for k, v in _shards(tgt_dir).items()}}

    # A fit needing layers 0 and 3 of the source computes those two; layer 1 is read as it is.
    registry.fit("src", "tgt", corpus=corpus_file, pairs="0:2,3:2,1:1")
    after_src = _shards(src_dir)
    assert sorted(after_src) == [shard_name(i) for i in (0, 1, 3)]
    assert after_src[shard_name(1)] == before[shard_name(1)]
    assert sorted(_shards(tgt_dir)) == [shard_name(i) for i in range(3)]
    for name in (shard_name(0), shard_name(2)):
        assert _shards(tgt_dir)[name] == before["t" + name]

    # "auto" needs every layer: only source layer 2 is left to compute.
    registry.fit("src", "tgt", corpus=corpus_file, pairs="auto")
    final = _shards(src_dir)
    assert sorted(final) == [shard_name(i) for i in range(4)]
    assert {k: final[k] for k in after_src} == after_src
    assert not list(src_dir.glob("*.partial"))
    assert not list(tgt_dir.glob("*.partial"))

    # Each stored layer is what a capture of every layer at once reads.
    lines, _ = load_corpus(corpus_file)
    full = residual_states(registry.load_model("src"), lines)
    cached = cached_states(src, oid)
    assert cached is not None
    assert cached.shape == tuple(full.shape)
    for layer in range(4):
        assert torch.equal(cached.layer(layer), full[:, layer])


def test_the_sharded_lazy_fit_equals_the_in_memory_fit_of_whole_tensors(
    registry: Registry,
    model_dirs: dict[str, Path],
    corpus_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old path: every layer captured into one tensor per model, the fit on those tensors."""
    _pair(registry, model_dirs)
    lines, _ = load_corpus(corpus_file)
    x = residual_states(registry.load_model("src"), lines)
    y = residual_states(registry.load_model("tgt"), lines)
    for pairs, solver in (("auto", "ridge"), ("all", "ridge"), ("3:1,0:2", "lstsq-svd")):
        wanted = pairs if pairs in ("auto", "all") else [(3, 1), (0, 2)]
        whole = fit_pairs(x, y, wanted, solver=solver)
        # one source per block: the targets stream past each source on its own
        monkeypatch.setattr(fit_module, "SOURCE_BLOCK_BYTES", 1)
        maps = registry.fit("src", "tgt", corpus=corpus_file, pairs=pairs, solver=solver)
        monkeypatch.undo()
        assert [(m.source_layer, m.target_layer) for m in maps] == [
            (fm.source_layer, fm.target_layer) for fm in whole
        ]
        for record, fm in zip(maps, whole, strict=True):
            weight, bias = registry.load_map(record.id)
            assert np.array_equal(weight, fm.weight)  # bit for bit, so the oids agree
            assert (bias is None) == (fm.bias is None)
            if bias is not None:
                assert np.array_equal(bias, fm.bias)
            assert record.oid == registry.store.put(encode_map(fm.weight, fm.bias))
            assert record.r2 == fm.r2
            assert record.metrics["r2_val"] == pytest.approx(fm.r2_val, rel=1e-12, abs=1e-12)


def test_the_single_file_cache_of_earlier_versions_is_still_read(
    registry: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    _pair(registry, model_dirs)
    src, tgt = registry.get_model("src"), registry.get_model("tgt")
    lines, raw = load_corpus(corpus_file)
    oid = registry.store.put(raw)
    whole = {}
    for record in (src, tgt):
        whole[record.name] = residual_states(registry.load_model(record.name), lines)
        path = _states_path(record, oid)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"states": whole[record.name]}, str(path))  # as the old code cached them
        registry.workspace.release(record)
    maps = registry.fit("src", "tgt", corpus=corpus_file, pairs="auto")
    expected = fit_pairs(whole["src"], whole["tgt"], "auto")
    assert [registry.load_map(m.id)[0].tobytes() for m in maps] == [
        fm.weight.tobytes() for fm in expected
    ]
    assert not states_folder(src, oid).exists()  # nothing recomputed
    assert not registry.workspace.is_loaded("src")
    assert not registry.workspace.is_loaded("tgt")
    cached = cached_states(tgt, oid)
    assert cached is not None
    assert cached.layers() == {0, 1, 2}
    assert torch.equal(cached.tensor(), whole["tgt"])


def test_a_shard_is_a_safetensors_file_and_refuses_to_commit_with_rows_missing(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    states = rng.normal(size=(7, 5)).astype(np.float32)
    writer = ShardWriter(tmp_path, 3, 7, 5)
    writer.write([4, 0, 6], states[[4, 0, 6]])  # rows arrive in batch order, not file order
    writer.write([1, 2, 3, 5], states[[1, 2, 3, 5]])
    writer.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["layer-003.safetensors"]
    loaded = load_file(str(tmp_path / "layer-003.safetensors"))
    assert list(loaded) == ["states"]
    assert loaded["states"].dtype == torch.float32
    assert np.array_equal(loaded["states"].numpy(), states)

    short = ShardWriter(tmp_path, 4, 7, 5)
    short.write([0, 1], states[:2])
    with pytest.raises(RuntimeError, match="5 of 7 rows never written"):
        short.commit()
    short.close()
    assert not (tmp_path / "layer-004.safetensors").exists()
    cache = CachedStates(tmp_path, tmp_path / "none.safetensors", (7, 6, 5))
    assert cache.layers() == {3}


KILLED = """
import os, signal, sys
import numpy as np
from pathlib import Path
from crx.registry.workflows.states import ShardWriter
writer = ShardWriter(Path(sys.argv[1]), 2, 40, 32)
writer.write(range(20), np.ones((20, 32), dtype=np.float32))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_capture_leaves_no_shard_that_reads_as_complete(
    registry: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    _pair(registry, model_dirs)
    src = registry.get_model("src")
    lines, raw = load_corpus(corpus_file)
    oid = registry.store.put(raw)
    folder = states_folder(src, oid)
    folder.mkdir(parents=True)
    killed = subprocess.Popen([sys.executable, "-c", KILLED, str(folder)])
    assert killed.wait() == -9  # killed mid-write, as a machine losing power would
    (partial,) = folder.iterdir()
    assert partial.name == f"layer-002.safetensors.{killed.pid}.partial"
    assert partial.stat().st_size > 40 * 32 * 4  # preallocated: its size says nothing
    assert cached_states(src, oid) is None  # a partial shard is no shard

    # The next capture of that layer removes the dead process's file and writes a whole shard.
    states = corpus_states(registry.workspace, src, lines, oid, layers=[2])
    assert sorted(p.name for p in folder.iterdir()) == ["layer-002.safetensors"]
    full = residual_states(registry.load_model("src"), lines, layers=[2])
    assert torch.equal(states.layer(2), full[:, 0])


def test_a_capture_releases_the_model_it_loaded_and_keeps_one_loaded_before(
    registry: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    _pair(registry, model_dirs)
    registry.load_model("tgt")
    registry.fit("src", "tgt", corpus=corpus_file, pairs="1:1")
    assert not registry.workspace.is_loaded("src")
    assert registry.workspace.is_loaded("tgt")
    assert registry.fit("src", "tgt", corpus=corpus_file, pairs="1:1")[0].source_layer == 1


def test_states_of_a_model_run_in_bfloat16_are_cached_apart(
    registry: Registry, model_dirs: dict[str, Path], corpus_file: Path
) -> None:
    """A fit with ``--dtype bfloat16`` neither reuses the float32 states nor overwrites them."""
    _pair(registry, model_dirs)
    src = registry.get_model("src")
    registry.fit("src", "tgt", corpus=corpus_file, pairs="1:2")
    _, raw = load_corpus(corpus_file)
    oid = registry.store.put(raw)
    float32 = _shards(states_folder(src, oid))
    assert sorted(float32) == [shard_name(1)]
    assert not states_folder(src, oid, "bfloat16").exists()

    registry.use_loading(dtype="bfloat16")
    registry.fit("src", "tgt", corpus=corpus_file, pairs="1:2", force=True)
    assert sorted(_shards(states_folder(src, oid, "bfloat16"))) == [shard_name(1)]
    assert _shards(states_folder(src, oid)) == float32  # untouched
    half = cached_states(src, oid, "bfloat16")
    full = cached_states(src, oid)
    assert half is not None
    assert full is not None
    a, b = half.layer(1), full.layer(1)
    assert not torch.equal(a, b)  # computed in bfloat16 this time, not read from float32
    assert float((a - b).norm() / b.norm()) < 0.05  # the same states, to bfloat16's precision
