"""Property-based fuzzing of every parser of user input: an answer, or a `CrxError`, never a crash.

Each parser is fed generated input (random bytes, JSON-shaped values, YAML-shaped text, names
of any characters) and must either succeed or raise a `CrxError`: anything else (a traceback,
a RecursionError, a UnicodeError, a database error) fails. CI runs a few hundred examples per
parser (deterministic: ``derandomize``); ``CRX_FUZZ_EXAMPLES=10000 pytest tests/test_fuzz.py``
runs the long sweep (3,000 per parser took 79 s here and found nothing).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crx.registry.errors import CrxError

EXAMPLES = int(os.environ.get("CRX_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["positive", "negative", "pos", "neg", "pairs", "x", "3"]) | st.text(),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


def _answer_or_crx_error(call: Any, *args: Any) -> None:
    with contextlib.suppress(CrxError):
        call(*args)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    ),
    suffix=st.sampled_from([".json", ".jsonl", ".csv", ".txt"]),
)
def test_pairs_files(tmp_path: Path, data: bytes, suffix: str) -> None:
    from crx.registry.pairs import parse_pairs_file

    path = tmp_path / f"pairs{suffix}"
    path.write_bytes(data)
    _answer_or_crx_error(parse_pairs_file, path)


yaml_text = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),  # JSON is YAML
    st.lists(
        st.sampled_from(
            ["models:", "concepts:", "- name: a", "  path: /nope", "  layer: 99999999999999",
             "maps:", "  - source: a", "    target: b", "    pairs: 99:99", "&x [1, *x]",
             "<<: *y", "version: 1", "\t", "  - {name: '\u202e'}", "!!python/object:os.system"]
        ),
        max_size=8,
    ).map("\n".join),
)  # fmt: skip


@FUZZ
@given(text=yaml_text)
def test_spec_files(tmp_path: Path, text: str) -> None:
    from crx.registry.declare import load_specs

    path = tmp_path / "spec.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _answer_or_crx_error(load_specs, path)


def _safetensors(header: Any, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


tensor_headers = st.dictionaries(
    st.sampled_from(["3", "direction.1", "layer.0", "v", "__metadata__", "9" * 20]),
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["BF16", "F32", "F16", "I64", "XX"]),
            "shape": st.lists(st.integers(min_value=-3, max_value=40), max_size=3),
            "data_offsets": st.lists(st.integers(min_value=-8, max_value=200), min_size=0,
                                     max_size=3),
        }
    ),
    max_size=3,
)  # fmt: skip


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.builds(_safetensors, tensor_headers, st.binary(max_size=200)),
    )
)
def test_tensor_files(tmp_path: Path, data: bytes) -> None:
    from crx.registry.interop import vector_from_tensors
    from crx.registry.store import tensors

    path = tmp_path / "v.safetensors"
    path.write_bytes(data)
    try:
        named = tensors.read_file(path)
    except CrxError:
        return
    _answer_or_crx_error(vector_from_tensors, named, 4, 32, str(path))


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.builds(_safetensors, tensor_headers, st.binary(max_size=200)),
        st.builds(lambda tail: b"GGUF" + tail, st.binary(max_size=300)),
        st.builds(lambda tail: b"\x93NUMPY" + tail, st.binary(max_size=200)),
        st.builds(lambda tail: b"PK\x03\x04" + tail, st.binary(max_size=200)),
    )
)
def test_vector_files_of_any_format(tmp_path: Path, data: bytes) -> None:
    """Whatever the first bytes claim, a vector file is read or refused with a CrxError."""
    from crx.registry.interop import vector_from_tensors
    from crx.registry.vector_files import read_vector_file

    path = tmp_path / "v.bin"
    path.write_bytes(data)
    try:
        found = read_vector_file(path)
    except CrxError:
        return
    _answer_or_crx_error(vector_from_tensors, found.tensors, 4, 32, str(path))


@FUZZ
@given(document=json_values)
def test_plan_documents(document: Any) -> None:
    from crx.registry.resolve.execute import read_plan

    if isinstance(document, dict):
        document = {"kind": "crx.transplant-plan", "schema_version": 1, **document}
    _answer_or_crx_error(read_plan, document)


@FUZZ
@given(config=json_values)
def test_model_configs(tmp_path: Path, config: Any) -> None:
    from crx.registry.models.facts import read_model_facts

    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    _answer_or_crx_error(read_model_facts, str(folder), None, None)


@FUZZ
@given(name=st.text(max_size=40), version=st.text(alphabet="0123456789@x", max_size=12))
def test_names_and_references(name: str, version: str) -> None:
    from crx.registry.names import check_name, parse_versioned

    _answer_or_crx_error(check_name, "concept", name)
    _answer_or_crx_error(parse_versioned, f"{name}@{version}")


@pytest.fixture(scope="module")
def fuzz_registry(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Any:
    import shutil

    from crx import Registry

    folder = tmp_path_factory.mktemp("fuzz-registry")
    shutil.copy(sqlite_template, folder / "r.db")
    reg = Registry(f"sqlite:///{folder / 'r.db'}", str(folder / "store"))
    reg.init()
    yield reg
    reg.close()


@FUZZ
@given(
    name=st.text(min_size=1, max_size=30),
    description=st.text(max_size=30),
    template=st.text(max_size=30).map(lambda t: t + "{text}"),
)
def test_names_that_pass_the_checks_store_and_read_back(
    fuzz_registry: Any, name: str, description: str, template: str
) -> None:
    """A name the checks accept is stored and found again, exactly; one they refuse leaves
    nothing behind."""
    from crx.registry.pairs import ContrastPair

    pairs = [ContrastPair(positive="glad", negative="sad")]
    before = len(fuzz_registry.list_concepts(limit=0).items)
    try:
        record = fuzz_registry.register_concept(
            name, pairs, description=description, template=template
        ).record
    except CrxError:
        assert len(fuzz_registry.list_concepts(limit=0).items) == before
        return
    assert fuzz_registry.get_concept(record.ref).concept == name


@settings(
    max_examples=max(EXAMPLES // 3, 20),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.text(min_size=1, max_size=20),
    data=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())),
    suffix=st.sampled_from([".json", ".jsonl", ".csv"]),
)
def test_the_cli_contract_on_generated_concepts(
    fuzz_registry: Any, tmp_path: Path, name: str, data: bytes, suffix: str
) -> None:
    """``crx register concept`` on generated names and files: exit 0 having registered it, or
    exit 1 with one ``Error:`` line on stderr and the registry as it was."""
    from click.testing import CliRunner

    from crx.cli.main import cli

    pairs = tmp_path / f"p{suffix}"
    pairs.write_bytes(data)
    db, store = fuzz_registry.location.database_url, fuzz_registry.location.store_url
    events = len(fuzz_registry.audit_events(limit=0).items)
    result = CliRunner().invoke(
        cli,
        ["--db", db, "--store", store, "register", "concept", "--pairs", str(pairs), "--", name],
    )
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        assert isinstance(result.exception, SystemExit)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("Error: "), lines
        assert len(fuzz_registry.audit_events(limit=0).items) == events
    else:
        assert result.stdout.strip().startswith(name + "@")
