"""A crx GGUF control vector applied by llama.cpp itself steers Gemma as crx's own hooks do.

Marked slow, and run only where ``llama_cpp`` (llama-cpp-python) imports: the package registry
has no wheel of it, only its source, which ``pip install llama-cpp-python`` compiles (llama.cpp
included; ~15 minutes on 2 cores). Where it is installed, the test pulls Gemma-3-270m keeping
its GGUF (the file crx converted its weights from), registers a direction on it, exports it
with ``export_vector(..., "gguf")`` at one block and a relative α, and loads the file into
llama.cpp the way its ``--control-vector`` loader does (``direction.N`` is layer N's row, rows
from layer 1). The next-token logits that move under llama.cpp's control vector must move the
same way as under crx's steering with the strength the export reports (cosine of the two
shifts, and their gap), and the same row placed one layer off must not: the layer numbering and
the baked strength both hold.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crx.registry import Registry
from crx.registry.workflows.demo import register_emotions

pytestmark = pytest.mark.slow
llama_cpp: Any = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (PyPI has only its source)"
)

MODEL, LAYER, ALPHA = "gemma3-270m", 6, 0.4
PROMPTS = ["This morning I woke up and", "The weather today is", "My favourite food is"]


def _directions(path: Path) -> dict[int, np.ndarray]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {
        int(t.name.split(".")[1]): np.asarray(t.data, dtype=np.float32).reshape(-1)
        for t in reader.tensors
        if t.name.startswith("direction.")
    }


def _apply(llm: Any, rows: dict[int, np.ndarray], n_embd: int, n_layer: int) -> None:
    """llama.cpp's control-vector buffer: layer ``il``'s row at ``(il - 1) * n_embd``."""
    data = np.zeros(n_embd * n_layer, dtype=np.float32)
    for il, row in rows.items():
        data[(il - 1) * n_embd : il * n_embd] = row
    pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    # llama_set_adapter_cvec: llama.cpp's C API (llama_apply_adapter_cvec before 0.3.x)
    apply = getattr(llama_cpp, "llama_set_adapter_cvec", None) or llama_cpp.llama_apply_adapter_cvec
    assert apply(llm.ctx, pointer, data.size, n_embd, 1, n_layer) == 0


def _last_logits(llm: Any, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[len(ids) - 1], dtype=np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _relative_gap(expected: np.ndarray, got: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def test_llama_cpp_applies_a_crx_gguf_as_crx_steers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from crx.registry.engine.steer import steer

    home = tmp_path / "home"
    monkeypatch.setenv("CRX_HOME", str(home))
    reg = Registry()
    record = reg.pull_model(MODEL, keep_gguf=True).registered.record
    [gguf_model] = (home / "cache" / "gguf").glob("*.gguf")
    ref = register_emotions(reg.catalog, ["sadness"])["sadness"]
    rng = np.random.default_rng(0)
    vector = rng.standard_normal((record.n_layers, record.d_model)).astype(np.float32)
    vid = reg.register_vector(ref, MODEL, {i: row for i, row in enumerate(vector)}).record.id
    report = reg.export_vector(
        vid, "gguf", tmp_path / "probe.gguf", layers=[LAYER], alpha=ALPHA, normalize=True
    )
    [exported] = report.layers
    rows = _directions(Path(report.path))
    assert sorted(rows) == [LAYER]
    np.testing.assert_allclose(rows[LAYER], exported.strength * vector[LAYER], rtol=1e-5)

    loaded = reg.load_model(MODEL)
    llm = llama_cpp.Llama(
        model_path=str(gguf_model), n_ctx=128, logits_all=True, verbose=False, n_threads=2
    )
    n_layer_of = getattr(llama_cpp, "llama_model_n_layer", None) or llama_cpp.llama_n_layer
    n_embd, n_layer = llm.n_embd(), n_layer_of(llm.model)
    assert (n_embd, n_layer) == (record.d_model, record.n_layers)

    crx_shift, cpp_shift, off_by_one = [], [], []
    for prompt in PROMPTS:
        # the same token ids on both sides: the comparison is of the intervention only
        ids = loaded.tokenizer(prompt)["input_ids"]
        with torch.inference_mode():
            inputs = torch.tensor([ids])
            base = loaded.model(inputs).logits[0, -1].double().numpy()
            with steer(loaded.layers, vector, layer=LAYER, alpha=exported.strength):
                steered = loaded.model(inputs).logits[0, -1].double().numpy()
        cpp_base = _last_logits(llm, ids)
        # sanity: llama.cpp runs the same weights (Q4_K_M, as crx dequantised them)
        assert _cosine(base - base.mean(), cpp_base - cpp_base.mean()) > 0.98
        _apply(llm, rows, n_embd, n_layer)
        cpp_steered = _last_logits(llm, ids)
        _apply(llm, {LAYER + 1: rows[LAYER]}, n_embd, n_layer)
        cpp_wrong = _last_logits(llm, ids)
        _apply(llm, {}, n_embd, n_layer)  # off again for the next prompt's base
        crx_shift.append(steered - base)
        cpp_shift.append(cpp_steered - cpp_base)
        off_by_one.append(cpp_wrong - cpp_base)

    # how far llama.cpp's shift is from crx's, relative to crx's: the file at its layer is the
    # same intervention up to llama.cpp's arithmetic (its int8 dot products with Q4 weights);
    # one layer later is a different one (nearby layers of a residual stream steer alike, so
    # the gap is a few times, not orders of magnitude)
    right = [_relative_gap(a, b) for a, b in zip(crx_shift, cpp_shift, strict=True)]
    wrong = [_relative_gap(a, b) for a, b in zip(crx_shift, off_by_one, strict=True)]
    assert max(right) < 0.1, (right, wrong)
    assert min(wrong) > 2 * max(right), (right, wrong)
    assert min(_cosine(a, b) for a, b in zip(crx_shift, cpp_shift, strict=True)) > 0.99
