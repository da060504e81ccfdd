"""Where and as what models load: ``--device``, ``--dtype``, ``--max-memory``, ``--offload-folder``.

On the tiny models of `tests.tiny_models`, on CPU only: bf16 really loads bf16 and extracts
finite vectors close to float32's; a memory budget with an offload folder goes through
accelerate (``hf_device_map``; part of the model on disk) and gives the very vector of a plain
load; bad values are one ``Error:`` line, exit 1, the registry unchanged. No GPU here: the CUDA
paths are only checked to be refused where torch has no CUDA, never claimed tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crx.registry.engine.capture import residual_states
from crx.registry.engine.loading import LoadSettings, load_model, parse_max_memory
from crx.registry.errors import InvalidInput
from tests.cli_world import World
from tests.test_cli_errors import snapshot, user_error
from tests.tiny_models import CORPUS, PAIRS

NO_CUDA = not torch.cuda.is_available()


def _engine_world(world: World, model_dirs: dict[str, Path]) -> World:
    with world.registry() as reg:
        reg.register_model("src", str(model_dirs["llama"]))
        reg.register_concept("happiness", PAIRS)
    return world


def _array(world: World, vector_id: int) -> np.ndarray:
    with world.registry() as reg:
        return np.asarray(reg.load_vector(vector_id))


def test_max_memory_parses_into_accelerates_dict_and_names_the_bad_part() -> None:
    assert parse_max_memory("0=20GiB, 1=20GiB,cpu=64GiB") == (
        (0, 20 * 2**30),
        (1, 20 * 2**30),
        ("cpu", 64 * 2**30),
    )
    assert parse_max_memory({"cuda:0": "1GB", "cpu": 512}) == ((0, 10**9), ("cpu", 512))
    for text, named in [
        ("0=20GiB,cpu", "'cpu'"),
        ("gpu0=1GiB", "'gpu0'"),
        ("cpu=lots", "'lots'"),
        ("cpu=-2GiB", "'-2GiB'"),
        ("cpu=1GiB,cpu=2GiB", "given twice"),
        (" , ", "empty"),
    ]:
        with pytest.raises(InvalidInput, match=named):
            parse_max_memory(text)
    with pytest.raises(InvalidInput, match="device cpu does not use"):
        LoadSettings.parse(device="cpu", max_memory="0=1GiB")
    with pytest.raises(InvalidInput, match="device must be one of"):
        LoadSettings(device="gpu")
    assert LoadSettings(device="CUDA:1").device == "cuda:1"


def test_bfloat16_loads_bf16_and_extracts_close_to_float32(
    sqlite_world: World, model_dirs: dict[str, Path]
) -> None:
    w = _engine_world(sqlite_world, model_dirs)
    full = _array(w, w.json("extract", "happiness", "--model", "src")["record"]["id"])
    args = ("extract", "happiness", "--model", "src", "--dtype", "bfloat16", "--force", "--json")
    result = w.ok(*args)
    # The progress line says where and as what the model loaded.
    assert "loading src (cpu, bfloat16)" in result.stderr
    record = json.loads(result.stdout)["record"]
    assert record["settings"]["loaded"] == "cpu, bfloat16"  # recorded with the vector
    half = _array(w, record["id"])
    with w.registry() as reg:
        reg.use_loading(dtype="bfloat16")
        loaded = reg.load_model("src")
        assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
        assert (loaded.dtype, loaded.label) == ("bfloat16", "cpu, bfloat16")
    assert half.dtype == np.float32
    assert np.isfinite(half).all()
    assert not np.array_equal(half, full)  # it really ran in bf16
    # bf16 keeps 8 bits of mantissa: the vectors agree to a few percent of their size.
    for layer in range(full.shape[0]):
        gap = np.linalg.norm(half[layer] - full[layer]) / np.linalg.norm(full[layer])
        assert gap < 0.1, (layer, gap)


def test_float16_on_cpu_is_allowed(model_dirs: dict[str, Path]) -> None:
    loaded = load_model(
        str(model_dirs["llama"]), settings=LoadSettings(device="cpu", dtype="float16")
    )
    states = residual_states(loaded, CORPUS[:4])
    assert loaded.dtype == "float16"
    assert torch.isfinite(states).all()


def test_a_budget_and_an_offload_folder_go_through_accelerate_and_change_nothing(
    sqlite_world: World, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    w = _engine_world(sqlite_world, model_dirs)
    plain = _array(w, w.json("extract", "happiness", "--model", "src")["record"]["id"])
    offload = tmp_path / "offload"
    result = w.ok(
        "extract", "happiness", "--model", "src", "--force", "--json",
        "--device", "cpu", "--max-memory", "cpu=1GiB", "--offload-folder", str(offload),
    )  # fmt: skip
    assert "loading src (accelerate device_map over cpu + disk, float32)" in result.stderr
    again = _array(w, json.loads(result.stdout)["record"]["id"])
    np.testing.assert_array_equal(again, plain)

    # A budget smaller than the model: accelerate keeps some blocks in memory, the rest on disk
    # (transformers sets hf_device_map only when the model is spread), and the states are the
    # plain load's exactly, every block hooked wherever it sits.
    path = str(model_dirs["llama"])
    size = sum(p.numel() * p.element_size() for p in load_model(path).model.parameters())
    base = residual_states(load_model(path), CORPUS[:6], token="mean")
    spread = load_model(
        path,
        settings=LoadSettings.parse(
            device="cpu", max_memory=f"cpu={int(size * 0.8)}B", offload_folder=offload
        ),
    )
    placement = set(spread.model.hf_device_map.values())
    assert placement == {"cpu", "disk"}, spread.model.hf_device_map
    # (The folder may stay empty: weights offloaded from safetensors are read in place.)
    assert spread.label.endswith("modules: 3 on cpu, 5 on disk"), spread.label
    assert str(spread.device) == "cpu"
    torch.testing.assert_close(residual_states(spread, CORPUS[:6], token="mean"), base)
    torch.testing.assert_close(
        residual_states(spread, CORPUS[:6]), residual_states(load_model(path), CORPUS[:6])
    )


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--device", "gpu"], "device must be one of auto, cpu, cuda, cuda:N, mps"),
        (["--max-memory", "cpu=lots"], "max memory 'cpu=lots': 'lots' is not a size"),
        (["--max-memory", "0=1GiB,cpu"], "max memory 'cpu': write DEVICE=SIZE"),
        (["--device", "cpu", "--max-memory", "0=1GiB"], "which device cpu does not use"),
        pytest.param(
            ["--device", "cuda"],
            "device cuda needs CUDA, and this torch",
            marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA"),
        ),
        pytest.param(
            ["--max-memory", "0=1GiB,cpu=1GiB"],
            "a max memory budget for a GPU needs CUDA",
            marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA"),
        ),
    ],
)
def test_bad_loading_options_are_one_error_line_and_change_nothing(
    sqlite_world: World, model_dirs: dict[str, Path], args: list[str], expect: str
) -> None:
    w = _engine_world(sqlite_world, model_dirs)
    before = snapshot(w)
    line = user_error(w.run("extract", "happiness", "--model", "src", *args))
    assert expect in line, line
    assert snapshot(w) == before


def test_offload_folder_that_is_a_file_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    with pytest.raises(InvalidInput, match="is not a folder"):
        LoadSettings.parse(offload_folder=a_file)


@pytest.mark.parametrize(
    "command", ["extract", "fit", "evaluate", "generate", "transplant", "demo"]
)
def test_every_model_loading_command_takes_the_loading_options(
    sqlite_world: World, command: str
) -> None:
    text = sqlite_world.ok(command, "--help").stdout
    for option in ("--device", "--dtype", "--max-memory", "--offload-folder"):
        assert option in text, (command, option)
