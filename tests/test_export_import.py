"""``crx export vector`` bakes what was evaluated into the file; ``crx register vector`` reads
peers' files by their first bytes and never unpickles one.

Exports are read back with gguf's own reader and safetensors; the strength baked in is checked
against what crx's own steering adds to a real (tiny, random-weight) model's block output.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from crx.registry import Registry
from crx.registry.errors import InvalidInput
from tests.cli_world import World
from tests.registry_world import D_MODEL, N_LAYERS, _vector


def _directions(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data).reshape(-1) for t in GGUFReader(str(path)).tensors}


def _field(path: Path, key: str) -> Any:
    return GGUFReader(str(path)).fields[key].contents()


def _evaluated(registry: Registry, vector_id: int, rows: list[tuple[int, float, float]]) -> list:
    """Record emotion evaluations (layer, α, token accuracy) at a recorded reference norm 10."""
    recorded = []
    for layer, alpha, value in rows:
        recorded += registry.record_evaluation(
            "tiny",
            "emotion",
            {"token_accuracy": value},
            vector_id=vector_id,
            dataset_oid="d" * 64,
            layers=[layer],
            alpha=alpha,
            n=20,
            settings={"normalize": True, "reference_norm": 10.0},
        )
    return recorded


def test_gguf_export_bakes_the_best_evaluation(
    registry: Registry, tiny: str, joy: str, tmp_path: Path
) -> None:
    array = _vector(1)
    vec = registry.save_vector(joy, tiny, array, origin="extracted").record
    rows = _evaluated(registry, vec.id, [(2, 0.1, 0.4), (2, 0.2, 0.7), (1, 0.4, 0.5)])
    out = tmp_path / "joy.gguf"
    report = registry.export_vector(vec.id, "gguf", out)
    assert report.source == "best-evaluation"
    assert report.evaluation_id == rows[1].id
    expected_strength = 0.2 * 10.0 / float(np.linalg.norm(array[2].astype(np.float64)))
    (layer,) = report.layers
    assert (layer.layer, layer.reference_norm_from) == (2, f"evaluation {rows[1].id}")
    assert layer.strength == pytest.approx(expected_strength, rel=1e-12)
    assert report.llama_cpp_args == [
        "--control-vector-scaled", str(out), "1", "--control-vector-layer-range", "2", "2",
    ]  # fmt: skip
    # read back with gguf's reader: names, shapes, layer_count, model_hint, the strength
    assert _field(out, "general.architecture") == "controlvector"
    assert _field(out, "controlvector.model_hint") == "llama"
    assert _field(out, "controlvector.layer_count") == 1
    directions = _directions(out)
    assert list(directions) == ["direction.2"]
    assert directions["direction.2"].shape == (D_MODEL,)
    np.testing.assert_allclose(directions["direction.2"], expected_strength * array[2], rtol=1e-6)
    assert _field(out, "crx.evaluation_id") == rows[1].id
    assert _field(out, "crx.concept") == "joy@1"
    assert _field(out, "crx.model") == "tiny"
    assert _field(out, "crx.oid") == vec.oid
    assert _field(out, "crx.export") == "best-evaluation"
    assert _field(out, "crx.layers") == [2]
    assert _field(out, "crx.normalize") is True
    assert _field(out, "crx.alpha") == pytest.approx(0.2)
    assert _field(out, "crx.version")
    # safetensors: the same rows, the other layers zero, the same fields in the header
    st = tmp_path / "joy.safetensors"
    assert registry.export_vector(vec.id, "safetensors", st).evaluation_id == rows[1].id
    from safetensors import safe_open

    with safe_open(str(st), "numpy") as handle:
        written = handle.get_tensor("vector")
        header = handle.metadata()
    np.testing.assert_array_equal(written[2], directions["direction.2"])
    assert not written[[0, 1, 3]].any()
    assert header["crx.evaluation_id"] == str(rows[1].id)
    assert header["crx.concept"] == "joy@1"
    assert header["crx.layers"] == "2"
    # --from-evaluation picks another row; one of another vector is refused
    other = registry.export_vector(vec.id, "gguf", out, from_evaluation=rows[2].id, force=True)
    assert [e.layer for e in other.layers] == [1]
    assert other.layers[0].strength == pytest.approx(
        0.4 * 10.0 / float(np.linalg.norm(array[1].astype(np.float64)))
    )
    second = registry.save_vector(joy, tiny, _vector(2), origin="extracted", estimator="x").record
    with pytest.raises(InvalidInput, match=f"not an evaluation of vector {second.id}"):
        registry.export_vector(second.id, "gguf", out, from_evaluation=rows[0].id, force=True)
    # --raw: the stored vector, every layer but 0 in a GGUF
    raw = registry.export_vector(vec.id, "gguf", out, raw=True, force=True)
    assert (raw.source, raw.dropped_layers) == ("raw", [0])
    directions = _directions(out)
    assert list(directions) == [f"direction.{i}" for i in range(1, N_LAYERS)]
    for i in range(1, N_LAYERS):
        np.testing.assert_array_equal(directions[f"direction.{i}"], array[i])


def test_export_asked_layers_and_absolute_alpha(
    registry: Registry, tiny: str, joy: str, tmp_path: Path
) -> None:
    array = _vector(3)
    vec = registry.save_vector(joy, tiny, array, origin="extracted").record
    out = tmp_path / "v.gguf"
    report = registry.export_vector(
        vec.id, "gguf", out, layers=[0, 1, 3], alpha=4.0, normalize=False
    )
    assert report.dropped_layers == [0]
    assert any("block 0 left out" in note for note in report.notes)
    assert [(e.layer, e.strength) for e in report.layers] == [(1, 4.0), (3, 4.0)]
    directions = _directions(out)
    assert list(directions) == ["direction.1", "direction.3"]
    np.testing.assert_allclose(directions["direction.3"], 4.0 * array[3], rtol=1e-7)
    assert report.llama_cpp_args is not None
    assert report.llama_cpp_args[-2:] == ["1", "3"]  # the range spans the layers written
    with pytest.raises(InvalidInput, match="never steers block 0"):
        registry.export_vector(vec.id, "gguf", out, layers=[0], alpha=1.0, normalize=False,
                               force=True)  # fmt: skip
    with pytest.raises(InvalidInput, match="absolute α has no default"):
        registry.export_vector(vec.id, "gguf", out, normalize=False, force=True)
    with pytest.raises(InvalidInput, match="out of range"):
        registry.export_vector(vec.id, "gguf", out, layers=[9], alpha=1.0, force=True)
    with pytest.raises(InvalidInput, match="--raw"):
        registry.export_vector(vec.id, "gguf", out, raw=True, alpha=1.0, force=True)


def test_relative_alpha_bakes_exactly_what_crx_steering_adds(
    reg: Registry, model_dirs: dict[str, Path], pairs_file: Path, tmp_path: Path
) -> None:
    """No evaluation recorded a norm at that layer: it is measured on the model, and the file's
    row is what `steer` adds to that block's output at the same α."""
    import torch

    from crx.registry.engine.steer import steer, strength
    from crx.registry.workflows.evaluate import reference_norm

    reg.register_model("llama", str(model_dirs["llama"]))
    record = reg.get_model("llama")
    concept = reg.register_concept("joy", pairs_file).record.ref
    array = np.random.default_rng(5).standard_normal((record.n_layers, record.d_model))
    vec = reg.save_vector(concept, "llama", array.astype(np.float32), origin="extracted").record
    out = tmp_path / "v.gguf"
    report = reg.export_vector(vec.id, "gguf", out, layers=[2], alpha=0.3)
    (layer,) = report.layers
    assert layer.reference_norm_from == "measured"
    loaded = reg.load_model("llama")
    assert layer.reference_norm == pytest.approx(reference_norm(loaded, 2), rel=1e-9)
    baked = _directions(out)["direction.2"]

    stored = reg.load_vector(vec.id)
    ids = loaded.tokenizer("The river runs past the mill", return_tensors="pt")
    scale = strength(
        0.3,
        normalize=True,
        reference_norm=layer.reference_norm,
        row_norm=float(torch.as_tensor(stored[2]).double().norm()),
        layer=2,
    )
    added = (scale * torch.as_tensor(stored[2]).double()).float().numpy()
    np.testing.assert_array_equal(baked, added)
    # and steering with the baked row at strength 1 gives crx's steered logits, bit for bit
    with torch.inference_mode():
        base = loaded.model(**ids).logits
        with steer(loaded.layers, baked, layer=2, alpha=1.0):
            moved = loaded.model(**ids).logits
        with steer(loaded.layers, stored, layer=2, alpha=0.3, normalize=True,
                   reference_norm=layer.reference_norm):  # fmt: skip
            crx_moved = loaded.model(**ids).logits
    assert not torch.allclose(base, moved)
    torch.testing.assert_close(moved, crx_moved, rtol=0, atol=0)


def test_cli_export_prints_the_llama_cpp_flags(populated_sqlite: World) -> None:
    w = populated_sqlite
    vector_id = str(w.facts["vector_id"])
    out = w.tmp / "joy.gguf"
    result = w.ok("export", "vector", vector_id, "--format", "gguf", "-o", str(out))
    assert "the raw vector: no evaluation of vector" in result.stdout
    assert "block 0 left out: llama.cpp refuses direction.0" in result.stdout
    assert result.stdout.splitlines()[-1] == (
        f"llama.cpp: --control-vector-scaled {out} 1 --control-vector-layer-range 1 3"
    )
    doc = w.json("export", "vector", vector_id, "--format", "gguf", "-o", str(out), "--force",
                 "--layer", "2", "--alpha", "3", "--absolute")  # fmt: skip
    assert (doc["source"], doc["alpha"], doc["normalize"]) == ("asked", 3.0, False)
    assert doc["layers"][0]["layer"] == 2
    assert doc["layers"][0]["strength"] == 3.0
    by_concept = w.json("export", "vector", "joy@1", "--model", "tiny", "-o", str(out), "--force",
                        "--format", "gguf")  # fmt: skip
    assert by_concept["vector_id"] == int(vector_id)
    refused = w.run("export", "vector", "joy@1", "-o", str(out), "--force")
    assert refused.exit_code == 1
    assert "say on which model (--model M)" in refused.stderr


# -- import ---------------------------------------------------------------------------------


def _gguf(path: Path, rows: dict[int, np.ndarray], arch: str = "controlvector") -> Path:
    """A control vector as repeng's export_gguf and llama.cpp's cvector-generator write it."""
    writer = GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", "llama")
    writer.add_uint32(f"{arch}.layer_count", len(rows))
    for layer, row in rows.items():
        writer.add_tensor(f"direction.{layer}", row)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_register_reads_formats_from_their_first_bytes(
    registry: Registry, tiny: str, joy: str, tmp_path: Path
) -> None:
    import torch
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file as save_torch

    array = _vector(7)

    def imported(path: Path, estimator: str) -> Any:
        return registry.register_vector(joy, tiny, path, estimator=estimator).record

    # a GGUF control vector named .bin: the bytes say GGUF
    gguf = _gguf(tmp_path / "repeng.bin", {i: array[i] for i in range(1, N_LAYERS)})
    rec = imported(gguf, "gguf")
    assert rec.layers == [1, 2, 3]
    assert (rec.settings["format"], rec.settings["source_dtype"]) == ("gguf", "float32")
    assert rec.settings["model_hint"] == "llama"
    np.testing.assert_array_equal(registry.load_vector(rec.id)[1:], array[1:])
    # safetensors key layouts: N, layer.N, direction.N; bf16 and f16 recorded as such
    for estimator, named, dtype in (
        ("keys-n", {str(i): array[i] for i in range(N_LAYERS)}, "float32"),
        ("keys-layer", {f"layer.{i}": array[i].astype(np.float16) for i in (0, 2)}, "float16"),
    ):
        path = tmp_path / f"{estimator}.safetensors"
        save_np(named, str(path))
        rec = imported(path, estimator)
        assert rec.settings["source_dtype"] == dtype
    bf16 = tmp_path / "bf16.dat"
    save_torch({f"direction.{i}": torch.from_numpy(array[i]).to(torch.bfloat16) for i in (1, 3)},
               str(bf16))  # fmt: skip
    rec = imported(bf16, "bf16")
    assert (rec.settings["format"], rec.settings["source_dtype"]) == ("safetensors", "bfloat16")
    assert rec.layers == [1, 3]
    expected = torch.from_numpy(array[3]).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(registry.load_vector(rec.id)[3], expected)
    # numpy: .npy (one 2-D array) and .npz (arrays named by layer)
    npy = tmp_path / "v.npy"
    np.save(npy, array.astype(np.float64))
    rec = imported(npy, "npy")
    assert (rec.settings["format"], rec.settings["source_dtype"]) == ("npy", "float64")
    npz = tmp_path / "v.npz"
    np.savez(npz, **{"direction.2": array[2]})
    rec = imported(npz, "npz")
    assert (rec.settings["format"], rec.layers) == ("npz", [2])
    # a model's GGUF is not a control vector
    model_gguf = _gguf(tmp_path / "model.gguf", {1: array[1]}, arch="llama")
    with pytest.raises(InvalidInput, match="not a control vector"):
        imported(model_gguf, "model")


class _Trap:
    """Unpickling this object touches a file: the proof that nothing was unpickled."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> Any:
        return (Path.touch, (self.sentinel,))


def test_pickles_are_refused_and_never_loaded(
    registry: Registry, tiny: str, joy: str, tmp_path: Path
) -> None:
    import torch

    sentinel = tmp_path / "unpickled"
    files = {
        "trap.pkl": pickle.dumps(_Trap(sentinel)),
        "legacy.pt": _torch_bytes({"x": _Trap(sentinel)}, zipped=False),
        "vector.pt": _torch_bytes({"x": _Trap(sentinel)}, zipped=True),
        "tensor.bin": _torch_bytes(torch.zeros(N_LAYERS, D_MODEL), zipped=True),
    }
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InvalidInput) as caught:
            registry.register_vector(joy, tiny, path)
        message = str(caught.value)
        assert "never unpickles" in message, name
        assert "safetensors.torch.save_file" in message, name
    assert not sentinel.exists()
    # an object array in a .npy is pickled Python objects too
    objects = io.BytesIO()
    np.save(objects, np.array([_Trap(sentinel)], dtype=object), allow_pickle=True)
    (tmp_path / "objects.npy").write_bytes(objects.getvalue())
    with pytest.raises(InvalidInput, match="Python objects"):
        registry.register_vector(joy, tiny, tmp_path / "objects.npy")
    assert not sentinel.exists()
    # bytes crx does not know: said so, with what it reads
    (tmp_path / "v.pt").write_bytes(b"(lp0\nI1\na.")  # a protocol-0 pickle
    with pytest.raises(InvalidInput, match=r"usually a pickle, which crx never loads"):
        registry.register_vector(joy, tiny, tmp_path / "v.pt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(InvalidInput, match=r"neither \.npz"):
        registry.register_vector(joy, tiny, tmp_path / "other.zip")
    assert registry.list_vectors().items == []


def _torch_bytes(value: Any, *, zipped: bool) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer, _use_new_zipfile_serialization=zipped)
    return buffer.getvalue()


def test_export_then_import_is_the_same_vector(
    registry: Registry, tiny: str, joy: str, tmp_path: Path
) -> None:
    array = _vector(9)
    vec = registry.save_vector(joy, tiny, array, origin="extracted").record
    out = tmp_path / "v.gguf"
    registry.export_vector(vec.id, "gguf", out, raw=True)
    back = registry.register_vector(joy, tiny, out, estimator="from-gguf").record
    assert back.layers == [1, 2, 3]
    np.testing.assert_array_equal(registry.load_vector(back.id)[1:], array[1:])


# -- Python interop -------------------------------------------------------------------------


def test_interop_round_trips_duck_typed_objects(registry: Registry, tiny: str, joy: str) -> None:
    import torch

    import crx

    array = _vector(11)
    cv = crx.interop.to_repeng(array, "llama", layers=[1, 3])
    assert cv.model_type == "llama"
    assert sorted(cv.directions) == [1, 3]
    np.testing.assert_array_equal(cv.directions[3], array[3])
    rows = crx.interop.from_repeng(cv)
    np.testing.assert_array_equal(rows[1], array[1])
    rec = registry.register_vector(joy, tiny, rows, estimator="repeng").record
    assert (rec.layers, rec.settings["format"]) == ([1, 3], "python")
    np.testing.assert_array_equal(registry.load_vector(rec.id)[3], array[3])
    # negative layers count from the end, given the model's depth
    assert list(crx.interop.from_repeng({-1: array[3]}, n_layers=N_LAYERS)) == [3]
    with pytest.raises(InvalidInput, match="counts from the end"):
        crx.interop.from_repeng({-1: array[3]})

    sv = crx.interop.to_steering_vectors(array, layers=[2])
    assert sv.layer_type == "decoder_block"
    assert isinstance(sv.layer_activations[2], torch.Tensor)
    back = crx.interop.from_steering_vectors(sv)
    np.testing.assert_array_equal(back[2], array[2])
    bf16 = {2: torch.from_numpy(array[2]).to(torch.bfloat16)}
    assert crx.interop.from_steering_vectors(bf16)[2].dtype == np.float32

    attention = crx.interop.SteeringVectorData({2: torch.zeros(D_MODEL)}, layer_type="self_attn")
    with pytest.raises(InvalidInput, match="decoder blocks"):
        crx.interop.from_steering_vectors(attention)


def test_layer_l_is_the_output_of_block_l_as_peers_read_it(llama: Any) -> None:
    """repeng reads direction L from ``hidden_states[L + 1]`` and adds it to ``layers[L]``'s
    output; steering-vectors hooks decoder block L; llama.cpp adds direction.L to block L's
    l_out. crx's row L, added by `steer`, is that same place: the input of block L + 1."""
    import torch

    from crx.registry.engine.steer import steer

    layer = 1
    shift = torch.randn(llama.d_model)
    seen: dict[str, torch.Tensor] = {}

    def record(name: str) -> Any:
        def hook(_module: Any, args: Any, kwargs: Any) -> None:
            seen[name] = (args[0] if args else kwargs["hidden_states"]).clone()

        return hook

    handle = llama.layers[layer + 1].register_forward_pre_hook(record("next"), with_kwargs=True)
    ids = llama.tokenizer("The river runs past the mill", return_tensors="pt")
    try:
        with torch.inference_mode():
            out = llama.model(**ids, output_hidden_states=True)
            base_next = seen["next"]
            vector = np.zeros((len(llama.layers), llama.d_model), np.float32)
            vector[layer] = shift.numpy()
            with steer(llama.layers, vector, layer=layer, alpha=1.0):
                llama.model(**ids)
    finally:
        handle.remove()
    # the unsteered input of block L+1 is hidden_states[L+1] (what repeng reads for layer L)
    torch.testing.assert_close(base_next, out.hidden_states[layer + 1])
    torch.testing.assert_close(seen["next"] - base_next, shift.expand_as(base_next))


def _peer(name: str) -> Any:
    """The real package, or a skip saying why not (neither installs beside crx's pins:
    repeng 0.4 wants numpy < 2 and fails to import under numpy 2; steering-vectors 0.12 wants
    transformers < 5)."""
    import importlib

    try:
        return importlib.import_module(name)
    except Exception as exc:  # an ImportError, or repeng's np.float_ under numpy 2
        pytest.skip(f"{name} cannot be imported here: {exc}")


def _steered_logits(llama: Any, array: np.ndarray, layer: int) -> Any:
    import torch

    from crx.registry.engine.steer import steer

    ids = llama.tokenizer("The river runs past the mill", return_tensors="pt")
    with torch.inference_mode(), steer(llama.layers, array, layer=layer, alpha=1.0):
        return llama.model(**ids).logits, ids


def test_real_steering_vectors_steers_as_crx_does(llama: Any) -> None:
    import torch

    import crx

    steering_vectors = _peer("steering_vectors")
    array = np.random.default_rng(4).standard_normal((len(llama.layers), llama.d_model))
    array = array.astype(np.float32)
    expected, ids = _steered_logits(llama, array, 2)
    sv = crx.interop.to_steering_vectors(array, layers=[2])
    assert isinstance(sv, steering_vectors.SteeringVector)
    with torch.inference_mode(), sv.apply(llama.model):
        got = llama.model(**ids).logits
    torch.testing.assert_close(got, expected)
    np.testing.assert_array_equal(crx.interop.from_steering_vectors(sv)[2], array[2])


def test_real_repeng_steers_as_crx_does(llama: Any) -> None:
    import torch

    import crx

    repeng = _peer("repeng")
    array = np.random.default_rng(4).standard_normal((len(llama.layers), llama.d_model))
    array = array.astype(np.float32)
    expected, ids = _steered_logits(llama, array, 2)
    cv = crx.interop.to_repeng(array, "llama", layers=[2])
    assert isinstance(cv, repeng.ControlVector)
    wrapped = repeng.ControlModel(llama.model, [2])
    try:
        wrapped.set_control(cv, 1.0)
        with torch.inference_mode():
            got = wrapped(**ids).logits
    finally:
        wrapped.unwrap()
    torch.testing.assert_close(got, expected)
