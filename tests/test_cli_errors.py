"""The CLI's error contract, from the README's "Command reference":

- a mistake the user can fix prints exactly one line ``Error: ...`` on stderr, exits 1, shows no
  traceback, and leaves the registry as it was (every listing, the audit trail and the set of
  files in the store are compared before and after);
- an out-of-date database is refused until upgraded, a corrupt or missing blob fails loads
  naming its oid;
- a usage error exits 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from crx.registry.db.connection import make_engine
from crx.registry.db.migrate import HEAD_REVISION
from tests.cli_world import D_MODEL, N_LAYERS, World, _closed_postgres, tiny_array
from tests.servers import free_port

EMOTION_DATA = Path(__file__).resolve().parent.parent / "registry" / "data" / "emotions"

# -- the error contract ---------------------------------------------------------------------


def user_error(result: Result, *, stdout_empty: bool = True) -> str:
    """Assert the README's error contract; return the one ``Error: ...`` line."""
    assert isinstance(result.exception, SystemExit), (
        f"not a clean exit: {result.exception!r}\n{result.output}"
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("Error: "), lines
    if stdout_empty:
        assert result.stdout == ""
    return lines[0]


def usage_error(result: Result) -> str:
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Error: " in result.stderr
    return result.stderr


def snapshot(world: World) -> dict:
    """Everything a failed command must leave as it was: listings, audit trail, store files.

    The listings are exactly what ``crx list KIND --json --limit 0`` prints (the CLI dumps these
    pages with ``model_dump(mode="json")``), read through one connection to keep this quick.
    """
    with world.registry() as reg:
        pages = {
            "models": reg.list_models(limit=0),
            "concepts": reg.list_concepts(limit=0),
            "vectors": reg.list_vectors(limit=0),
            "maps": reg.list_maps(limit=0),
            "evaluations": reg.list_evaluations(limit=0),
            "audit": reg.audit_events(limit=0),
        }
    lists = {kind: page.model_dump(mode="json") for kind, page in pages.items()}
    return {
        "lists": lists,
        "audit_count": len(lists["audit"]["items"]),
        "blob_files": world.blob_files(),
    }


# -- bad input: one line, exit 1, nothing changed -------------------------------------------


@dataclass
class Bad:
    args: list[str]
    expect: str
    db: str | None = None
    store: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _register_vector(w: World, path: Path, concept: str = "joy@1", model: str = "tiny") -> Bad:
    return Bad(["register", "vector", concept, "--model", model, "--file", str(path)], "")


def _vector(w: World, named: dict[str, np.ndarray], expect: str) -> Bad:
    bad = _register_vector(w, w.tensors(named))
    bad.expect = expect
    return bad


def _pairs(w: World, name: str, content: bytes | str, expect: str) -> Bad:
    return Bad(["register", "concept", "joy", "--pairs", str(w.file(name, content))], expect)


def _export_over_a_link(w: World) -> Bad:
    victim = w.file("victim.txt", "keep me")
    link = w.tmp / "link.safetensors"
    link.symlink_to(victim)
    return Bad(["export", "vector", "1", "-o", str(link), "--force"], "not a regular file")


def _alias_bomb(w: World) -> Bad:
    # Nine levels of ten aliases: 10^9 values once expanded, from a few hundred bytes.
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    lines.append("models: *a9")
    spec = w.file("bomb.yaml", "\n".join(lines) + "\n")
    return Bad(["diff", str(spec)], "expands to more than 100,000 values")


def _zero_config(w: World) -> Path:
    folder = w.tmp / "zero-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").symlink_to("/dev/zero")
    return folder


def _deep_config(w: World) -> Path:
    folder = w.tmp / "deep-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    return folder


def _config(w: World, name: str, **fields: object) -> Bad:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": 4,
        "hidden_size": 32,
        "vocab_size": 100,
        **fields,
    }
    folder = w.tmp / f"config-{name}"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return Bad(["register", "model", name, "--path", str(folder)], "")


def _bad_config(w: World, expect: str, **fields: object) -> Bad:
    bad = _config(w, "broken", **fields)
    bad.expect = expect
    return bad


def _spec(w: World, name: str, text: str) -> Bad:
    return Bad(["diff", str(w.file(name, text))], "")


def _spec_bad(w: World, text: str, expect: str) -> Bad:
    bad = _spec(w, "spec.yaml", text)
    bad.expect = expect
    return bad


def _two_policies(w: World) -> Bad:
    folder = w.tmp / "policies"
    folder.mkdir()
    (folder / "a.yaml").write_text("kind: policy\nname: a\nconcept: joy\n")
    (folder / "b.yaml").write_text("kind: policy\nname: b\nconcept: joy\n")
    return Bad(["apply", str(folder)], "b.yaml:2: policy b has the same scope as policy a")


def _good_vector(w: World) -> str:
    return str(w.tensors({"v": tiny_array(7)}))


def _nan() -> np.ndarray:
    array = tiny_array()
    array[2, 5] = np.nan
    return array


BAD_INPUT: dict[str, Callable[[World], Bad]] = {
    "unknown model (register vector)": lambda w: Bad(
        ["register", "vector", "joy@1", "--model", "nope", "--file", _good_vector(w)],
        "no model 'nope' in the registry",
    ),
    "unknown model (show)": lambda w: Bad(["show", "model", "nope"], "no model 'nope'"),
    "unknown emotion (demo)": lambda w: Bad(
        ["demo", "--emotion", "sadness", "--emotion", "nosuch"],
        "unknown emotion 'nosuch': the emotions are happiness, sadness, anger, fear, disgust, "
        "surprise",
    ),
    "emotion in capitals (demo)": lambda w: Bad(
        ["demo", "--emotion", "Happiness"], "unknown emotion 'Happiness': the emotions are"
    ),
    "unknown concept (register vector)": lambda w: Bad(
        ["register", "vector", "sadness", "--model", "tiny", "--file", _good_vector(w)],
        "no concept 'sadness'",
    ),
    "unknown concept (show)": lambda w: Bad(["show", "concept", "sadness"], "no concept 'sadness'"),
    "unknown concept version (show)": lambda w: Bad(["show", "concept", "joy@9"], "'joy@9'"),
    "unknown concept version (register vector)": lambda w: Bad(
        ["register", "vector", "joy@9", "--model", "tiny", "--file", _good_vector(w)], "'joy@9'"
    ),
    "malformed concept version": lambda w: Bad(["show", "concept", "joy@-1"], "invalid version"),
    "unknown alias": lambda w: Bad(["show", "concept", "joy@x"], "no alias joy@x"),
    "unknown vector (show)": lambda w: Bad(["show", "vector", "99"], "no vector '99'"),
    "unknown vector (export)": lambda w: Bad(
        ["export", "vector", "99", "-o", str(w.tmp / "out.safetensors")], "no vector '99'"
    ),
    "unknown map": lambda w: Bad(["show", "map", "99"], "no map '99'"),
    "an id over 2^63 (show)": lambda w: Bad(["show", "vector", str(2**70)], "no vector '1180"),
    "an id over 2^63 (export)": lambda w: Bad(
        ["export", "vector", str(2**70), "-o", str(w.tmp / "v.safetensors")], "no vector '1180"
    ),
    "a model id over 2^31": lambda w: Bad(["show", "model", str(2**40)], "no model '1099"),
    "a version over 2^31": lambda w: Bad(["show", "concept", f"joy@{2**31 + 5}"], "no concept"),
    "a version of 5,000 digits": lambda w: Bad(
        ["show", "concept", "joy@" + "9" * 5000], "at most 10 digits"
    ),
    "no vector to evaluate": lambda w: Bad(
        ["evaluate", "joy", "--model", "tiny-b"], "no vector of joy@1 on tiny-b"
    ),
    "no vector to generate with": lambda w: Bad(
        ["generate", "--model", "tiny-b", "--concept", "joy", "hello"],
        "no vector of joy@1 on tiny-b",
    ),
    "malformed JSON pairs": lambda w: _pairs(
        w, "p.json", '[{"positive": "a", "negative": ', "invalid JSON"
    ),
    "malformed JSONL pairs": lambda w: _pairs(
        w, "p.jsonl", '{"positive": "a", "negative": "b"}\n{"positive": \n', "line 2"
    ),
    "pairs JSON of the wrong type": lambda w: _pairs(w, "p.json", '"text"', "expected a JSON"),
    "empty pairs list": lambda w: _pairs(w, "p.json", "[]", "holds no pairs"),
    "empty pairs file": lambda w: _pairs(w, "p.jsonl", "", "holds no pairs"),
    # crx's own emotion data is scenarios, not pairs: the error says what the file is
    "a scenarios file as pairs": lambda w: Bad(
        ["register", "concept", "joy", "--pairs", str(EMOTION_DATA / "happiness.json")],
        "--emotion EMOTION` builds the pairs",
    ),
    "register concept with neither --pairs nor --emotion": lambda w: Bad(
        ["register", "concept", "joy"], "give either --pairs FILE or --emotion EMOTION"
    ),
    "register concept with both --pairs and --emotion": lambda w: Bad(
        ["register", "concept", "joy", "--pairs", str(w.pairs), "--emotion", "sadness"],
        "give either --pairs FILE or --emotion EMOTION",
    ),
    "register concept from an unknown emotion": lambda w: Bad(
        ["register", "concept", "joy", "--emotion", "Sadness"],
        "unknown emotion 'Sadness': the emotions are happiness, sadness, anger, fear, disgust",
    ),
    "register concept from an emotion with a template": lambda w: Bad(
        ["register", "concept", "joy", "--emotion", "sadness", "--template", "{text}!"],
        "--template goes with --pairs",
    ),
    "pairs file does not exist": lambda w: Bad(
        ["register", "concept", "joy", "--pairs", str(w.tmp / "missing.json")],
        "No such file or directory",
    ),
    "pairs file is a directory": lambda w: Bad(
        ["register", "concept", "joy", "--pairs", str(w.tmp)], "directory"
    ),
    "pairs file not UTF-8": lambda w: _pairs(
        w, "p.json", b'[{"positive": "\xff\xfe", "negative": "x"}]', "not UTF-8"
    ),
    "CSV without the columns": lambda w: _pairs(
        w, "p.csv", "good,bad\nhappy,sad\n", "CSV needs columns positive,negative"
    ),
    "pair with empty negative": lambda w: _pairs(
        w,
        "p.json",
        '[{"positive": "a", "negative": "b"}, {"positive": "c", "negative": ""}]',
        "pair 2 has no negative text",
    ),
    "pos and neg of different lengths": lambda w: _pairs(
        w, "p.json", '{"pos": ["a", "b"], "neg": ["c"]}', "2 positives but 1 negatives"
    ),
    "template without {text}": lambda w: Bad(
        ["register", "concept", "joy", "--pairs", str(w.pairs), "--template", "no slot"],
        "{text}",
    ),
    "vector of the wrong shape": lambda w: _vector(
        w, {"v": np.ones((3, D_MODEL), np.float32)}, "shape [3, 32], expected [4, 32]"
    ),
    "vector of the wrong width": lambda w: _vector(
        w, {"direction.1": np.ones(D_MODEL + 1, np.float32)}, "shape [33], expected [32]"
    ),
    "vector layer out of range": lambda w: _vector(
        w, {"direction.9": np.ones(D_MODEL, np.float32)}, "layer 9 is out of range"
    ),
    "vector of int dtype": lambda w: _vector(
        w, {"v": np.ones((N_LAYERS, D_MODEL), np.int32)}, "floating-point"
    ),
    "vector with NaN": lambda w: _vector(w, {"v": _nan()}, "NaN"),
    "vector with inf": lambda w: _vector(
        w, {"v": np.full((N_LAYERS, D_MODEL), np.inf, np.float32)}, "infinite"
    ),
    "vector with a layer twice": lambda w: _vector(
        w, {"3": tiny_array()[3], "direction.3": tiny_array()[2]}, "layer 3 appears twice"
    ),
    "vector keyed by a 5,000-digit layer": lambda w: _vector(
        w, {"9" * 5000: tiny_array()[0]}, "neither the only tensor nor keyed by a layer index"
    ),
    "pairs JSON nested 100,000 deep": lambda w: _pairs(
        w, "deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"
    ),
    # found by benchmarks/hostile_campaign.py: a UnicodeEncodeError traceback when hashing
    "pairs JSON with a lone surrogate escape": lambda w: _pairs(
        w, "p.json", '[{"positive": "a \\ud800 b", "negative": "x"}]', "not valid UTF-8"
    ),
    "pairs JSONL with a lone surrogate escape": lambda w: _pairs(
        w, "p.jsonl", '{"positive": "a", "negative": "\\udcff"}\n', "pair 1's negative text"
    ),
    "a config.json linked to /dev/zero": lambda w: Bad(
        ["register", "model", "zero", "--path", str(_zero_config(w))], "not a regular file"
    ),
    "a plan from /dev/zero": lambda w: Bad(
        ["transplant", "--plan", "/dev/zero"], "not a regular file"
    ),
    "a plan with a lone surrogate escape": lambda w: Bad(
        [
            "transplant",
            "--plan",
            str(
                w.file(
                    "p.json",
                    '{"kind": "crx.transplant-plan", "concepts": [{"concept": "joy\\ud800"}]}',
                )
            ),
        ],
        "it holds text that is not UTF-8",
    ),
    "a spec model family of 101 characters": lambda w: _spec_bad(
        w,
        f"models:\n  - {{name: fam, path: {w.model_dir}, family: {'f' * 101}}}\n",
        "models[0].family: it is longer than 100 characters (101)",
    ),
    # diff refuses what apply would refuse after its slow part (found by the hostile campaign)
    "a spec transplant at a layer the target lacks": lambda w: _spec_bad(
        w,
        "transplants:\n  - {concept: joy, source: tiny, target: tiny-b, layer: 99}\n",
        "layer 99 is out of range for tiny-b (2 layers)",
    ),
    "a spec transplant with no map into its target": lambda w: _spec_bad(
        w,
        "transplants:\n  - {concept: joy, source: tiny-b, target: tiny}\n",
        "no map from tiny-b to tiny: declare one under maps",
    ),
    "a spec batch_size of 40 digits": lambda w: _spec_bad(
        w,
        f"concepts:\n  - {{name: joy, pairs: {w.pairs}, extraction: {{batch_size: {'9' * 40}}}}}\n",
        "less than or equal to 4096",
    ),
    "a spec whose alias contains itself": lambda w: Bad(
        ["diff", str(w.file("rec.yaml", "models: &a [*a]\n"))], "a recursive alias"
    ),
    "plan --min-r2 nan": lambda w: Bad(
        ["plan", "--target", "tiny-b", "--min-r2", "nan"], "--min-r2 must be a number, not nan"
    ),
    "fit layer pairs past the models' layers": lambda w: Bad(
        ["fit", "--source", "tiny", "--target", "tiny-b", "--pairs", "99:99"],
        "layer 99 is out of range for tiny (4 layers)",
    ),
    "fit layer pairs of 5,000 digits": lambda w: Bad(
        ["fit", "--source", "tiny", "--target", "tiny-b", "--pairs", "9" * 5000 + ":1"],
        "layer pairs must be auto, all or LS:LT",
    ),
    "pairs JSON with a 5,000-digit number": lambda w: _pairs(
        w, "digits.json", '[{"positive": ' + "9" * 5000 + "}]", "invalid JSON"
    ),
    "pairs CSV with a field over 128 KiB": lambda w: _pairs(
        w, "big.csv", "positive,negative\n" + "x" * 200_000 + ",y\n", "invalid CSV"
    ),
    "a plan nested 100,000 deep": lambda w: Bad(
        ["transplant", "--plan", str(w.file("deep-plan.json", "[" * 100_000 + "]" * 100_000))],
        "nested too deeply",
    ),
    "a model config nested 100,000 deep": lambda w: Bad(
        ["register", "model", "deep", "--path", str(_deep_config(w))], "nested too deeply"
    ),
    "a spec with a control character": lambda w: Bad(
        ["diff", str(w.file("ctrl.yaml", "models:\n  - name: a\x07b\n"))], "bad YAML"
    ),
    "a database URL with a bad port": lambda w: Bad(
        ["list", "models"], "not a database URL", db="postgresql://crx@127.0.0.1:notaport/crx"
    ),
    "a database URL with an open bracket": lambda w: Bad(
        ["list", "models"], "cannot open the database", db="postgresql://crx@[::1/crx"
    ),
    "export where the OS refuses": lambda w: Bad(
        ["export", "vector", "1", "-o", "/proc/crx-export.safetensors"], "cannot write"
    ),
    "a concept name that is not UTF-8": lambda w: Bad(
        ["register", "concept", "joy\udcff", "--pairs", str(w.pairs)], "not valid UTF-8"
    ),
    "a description that is not UTF-8": lambda w: Bad(
        ["register", "concept", "joy2", "--pairs", str(w.pairs), "--description", "a\udcffb"],
        "invalid description",
    ),
    "a family of 101 characters": lambda w: Bad(
        ["register", "model", "fam", "--path", str(w.model_dir), "--family", "f" * 101],
        "longer than 100 characters",
    ),
    "a hook point of 101 characters": lambda w: Bad(
        [*_register_vector(w, w.tensors({"v": tiny_array(5)})).args, "--hook-point", "h" * 101],
        "longer than 100 characters",
    ),
    "a NUL in a description": lambda w: Bad(
        ["register", "concept", "joy2", "--pairs", str(w.pairs), "--description", "a\x00b"],
        "NUL",
    ),
    "config: architectures as a dict": lambda w: _bad_config(
        w, "architectures must be a list", architectures={"a": 1}
    ),
    "config: architectures as a string": lambda w: _bad_config(
        w, "architectures must be a list", architectures="LlamaForCausalLM"
    ),
    "config: text_config as a string": lambda w: _bad_config(
        w, "text_config is not an object", text_config="x"
    ),
    "config: negative layers": lambda w: _bad_config(
        w, "num_hidden_layers must be a whole number", num_hidden_layers=-4
    ),
    "config: zero layers": lambda w: _bad_config(
        w, "num_hidden_layers must be a whole number", num_hidden_layers=0
    ),
    "config: boolean layers": lambda w: _bad_config(
        w, "num_hidden_layers must be a whole number", num_hidden_layers=True
    ),
    "config: 2^40 layers": lambda w: _bad_config(
        w, "num_hidden_layers must be a whole number", num_hidden_layers=2**40
    ),
    "config: width 0": lambda w: _bad_config(w, "hidden_size must be", hidden_size=0),
    "config: width 2^62": lambda w: _bad_config(w, "hidden_size must be", hidden_size=2**62),
    "config: vocab_size as a string": lambda w: _bad_config(
        w, "vocab_size must be a whole number", vocab_size="x"
    ),
    "a concept named '.'": lambda w: Bad(
        ["register", "concept", ".", "--pairs", str(w.pairs)], "only dots"
    ),
    "a concept named '-rf'": lambda w: Bad(
        ["register", "concept", "--pairs", str(w.pairs), "--", "-rf"], "starts with '-'"
    ),
    "a concept name with a bidi override": lambda w: Bad(
        ["register", "concept", "joy\u202egnp.exe", "--pairs", str(w.pairs)], "U+202E"
    ),
    "a concept name with a zero-width space": lambda w: Bad(
        ["register", "concept", "jo\u200by", "--pairs", str(w.pairs)], "U+200B"
    ),
    "a concept name with a line separator": lambda w: Bad(
        ["register", "concept", "jo\u2028y", "--pairs", str(w.pairs)], "U+2028"
    ),
    "a concept name in NFD": lambda w: Bad(
        ["register", "concept", "cafe\u0301", "--pairs", str(w.pairs)], "NFC"
    ),
    "a spec layer of 5,000 digits": lambda w: _spec_bad(
        w,
        "transplants:\n  - {concept: joy, source: tiny, target: tiny-b, layer: "
        + "9" * 5000
        + "}\n",
        "Exceeds the limit",
    ),
    "a spec description with a lone surrogate": lambda w: _spec_bad(
        w,
        f'concepts:\n  - {{name: joy, pairs: {w.pairs}, description: "a \\ud800 b"}}\n',
        "concepts[0].description: it is not valid UTF-8 text",
    ),
    "a spec model folder that does not exist": lambda w: _spec_bad(
        w, f"models:\n  - name: ghost\n    path: {w.tmp / 'no-such-model'}\n", "does not exist"
    ),
    "a spec map pair past the models' layers": lambda w: _spec_bad(
        w,
        "maps:\n  - {source: tiny, target: tiny-b, pairs: '99:1'}\n",
        "layer 99 is out of range for tiny",
    ),
    "a policy spec with an unknown key": lambda w: _spec_bad(
        w, "kind: policy\nname: gate\napprovls: 2\n", "3: unknown key 'approvls' (did you mean"
    ),
    "a policy rule that asks nothing": lambda w: _spec_bad(
        w,
        "kind: policy\nname: gate\nevidence:\n  - {task: emotion, metric: accuracy}\n",
        "4: evidence[0]: the rule for emotion accuracy asks nothing",
    ),
    "a policy with no approval": lambda w: _spec_bad(
        w, "kind: policy\nname: gate\napprovals: 0\n", "approvals: must be greater than or equal"
    ),
    "two policies of one scope": _two_policies,
    "unknown policy (show)": lambda w: Bad(["policy", "show", "nope"], "no policy 'nope'"),
    "policy for an unknown model": lambda w: Bad(
        ["policy", "for", "joy", "--model", "nope"], "no model 'nope'"
    ),
    "vector file not safetensors": lambda w: Bad(
        _register_vector(w, w.file("v.safetensors", b"GGUF this is not safetensors")).args,
        "not a valid GGUF file",
    ),
    "vector file a pickle": lambda w: Bad(
        _register_vector(w, w.file("v.pt", b"\x80\x04\x95 not unpickled")).args,
        "crx never unpickles a file",
    ),
    "vector file does not exist": lambda w: Bad(
        _register_vector(w, w.tmp / "missing.safetensors").args, "cannot read"
    ),
    "vector file is a directory": lambda w: Bad(_register_vector(w, w.tmp).args, "directory"),
    "vector with different values, no --replace": lambda w: Bad(
        [*_register_vector(w, w.tensors({"v": tiny_array(3)})).args, "--estimator", "mean_diff"],
        "already exists; pass replace (CLI: --replace)",
    ),
    "replacing a vector an evaluation derives from": lambda w: Bad(
        [
            *_register_vector(w, w.tensors({"v": tiny_array(3)})).args,
            *("--estimator", "mean_diff", "--replace"),
        ],
        "cannot be replaced: 0 mapped vector(s) and 2 evaluation metric(s) derive from it",
    ),
    "model name with '/'": lambda w: Bad(
        ["register", "model", "org/tiny", "--path", str(w.model_dir)], "path separator"
    ),
    "concept name with '../'": lambda w: Bad(
        ["register", "concept", "../evil", "--pairs", str(w.pairs)], "path separator"
    ),
    "concept name with '..'": lambda w: Bad(
        ["register", "concept", "a..b", "--pairs", str(w.pairs)], "'..'"
    ),
    "concept name with a control character": lambda w: Bad(
        ["register", "concept", "joy\x1b[31m", "--pairs", str(w.pairs)], "control character"
    ),
    "model name with a newline": lambda w: Bad(
        ["register", "model", "tiny\nb", "--path", str(w.model_dir)], "control character"
    ),
    "model re-registered with another shape while in use": lambda w: Bad(
        ["register", "model", "tiny", "--path", str(w.tmp / "tiny-b")], "register the new one"
    ),
    "model folder does not exist": lambda w: Bad(
        ["register", "model", "ghost", "--path", str(w.tmp / "no-such-model")], "does not exist"
    ),
    "model folder without config": lambda w: Bad(
        ["register", "model", "ghost", "--path", str(w.tmp)], "no config.json"
    ),
    "export over a symbolic link, even with --force": _export_over_a_link,
    "a YAML alias bomb in a spec": _alias_bomb,
    "pairs from /dev/zero": lambda w: Bad(
        ["register", "concept", "zero", "--pairs", "/dev/zero"], "not a regular file"
    ),
    "vector from /dev/zero": lambda w: Bad(
        _register_vector(w, Path("/dev/zero")).args, "not a regular file"
    ),
    "export into a missing folder": lambda w: Bad(
        ["export", "vector", "1", "-o", str(w.tmp / "no" / "v.gguf")], "does not exist"
    ),
    "unreachable PostgreSQL (list)": lambda w: Bad(
        ["list", "models"], "cannot open the database", db=_closed_postgres()
    ),
    "unreachable PostgreSQL (register)": lambda w: Bad(
        ["register", "concept", "joy2", "--pairs", str(w.pairs)],
        "cannot open the database postgresql://crx:***@127.0.0.1",
        db=_closed_postgres(),
    ),
    "SQLite in a missing folder": lambda w: Bad(
        ["register", "concept", "joy2", "--pairs", str(w.pairs)],
        "does not exist",
        db=f"sqlite:///{w.tmp / 'no-such-folder' / 'registry.db'}",
    ),
    "unreachable bucket (register)": lambda w: Bad(
        ["register", "concept", "joy2", "--pairs", str(w.pairs)],
        "cannot use the store s3://crx-unreachable/store",
        store="s3://crx-unreachable/store",
        env=_closed_s3_env(),
    ),
    "credentials in the bucket's place (botocore's message spans lines)": lambda w: Bad(
        ["store", "verify"],
        "Invalid bucket name",
        store="s3://AKIAX:s3cret@bucket/crx",
        env=_closed_s3_env(),
    ),
    "unreachable bucket (verify)": lambda w: Bad(
        ["store", "verify"],
        "cannot use the store s3://crx-unreachable/store",
        store="s3://crx-unreachable/store",
        env=_closed_s3_env(),
    ),
    "float32 products with the SVD solver": lambda w: Bad(
        [
            "fit",
            "--source",
            "tiny",
            "--target",
            "tiny",
            "--solver",
            "lstsq-svd",
            "--precision",
            "float32",
        ],
        "precision float32 applies to the ridge solver only",
    ),
    "unreachable bucket (export)": lambda w: Bad(
        ["export", "vector", "1", "-o", str(w.tmp / "v.safetensors")],
        "cannot use the store s3://crx-unreachable/store",
        store="s3://crx-unreachable/store",
        env=_closed_s3_env(),
    ),
    # governance: nothing moves, approves or deprecates on a mistake
    "alias on an unknown concept": lambda w: Bad(
        ["alias", "set", "nope@1", "staging", "--model", "tiny"], "no concept 'nope@1'"
    ),
    "alias on an unknown model": lambda w: Bad(
        ["alias", "set", "joy@1", "staging", "--model", "nope"], "no model 'nope'"
    ),
    "alias set on prod": lambda w: Bad(
        ["alias", "set", "joy@1", "prod", "--model", "tiny"], "moves only with `crx promote"
    ),
    "alias name all digits": lambda w: Bad(
        ["alias", "set", "joy@1", "42", "--model", "tiny"], "cannot be all digits"
    ),
    "alias name with a slash": lambda w: Bad(
        ["alias", "set", "joy@1", "a/b", "--model", "tiny"], "invalid alias name"
    ),
    "alias expect not a vector id": lambda w: Bad(
        ["alias", "set", "joy@1", "staging", "--model", "tiny", "--expect", "latest"],
        "--expect takes a vector id",
    ),
    "alias vector of another model": lambda w: Bad(
        ["alias", "set", "joy@1", "staging", "--model", "tiny-b", "--vector", "1"],
        "is not a vector of joy@1 on tiny-b",
    ),
    "alias show unknown": lambda w: Bad(["alias", "show", "joy@staging"], "no alias joy@staging"),
    "alias history unknown concept": lambda w: Bad(
        ["alias", "history", "nope", "--model", "tiny"], "no concept 'nope'"
    ),
    "alias delete unknown": lambda w: Bad(
        ["alias", "delete", "joy@staging", "--model", "tiny"], "no alias joy@staging on tiny"
    ),
    "promote without evidence or approval": lambda w: Bad(
        ["promote", "joy@1", "--model", "tiny"], "approvals: 0 of 1 from someone other than"
    ),
    "promote a concept with no vector there": lambda w: Bad(
        ["promote", "joy@1", "--model", "tiny-b"], "no vector of joy@1 on tiny-b"
    ),
    "approve an unknown vector": lambda w: Bad(
        ["approve", "joy@1", "--model", "tiny", "--vector", "999"], "no vector '999'"
    ),
    "deprecate an unknown map": lambda w: Bad(["deprecate", "map:999", "--reason", "x"], "no map"),
    "deprecate a malformed ref": lambda w: Bad(
        ["deprecate", "vector:abc", "--reason", "x"], "vector:ID needs a numeric id"
    ),
    "deprecate with an empty reason": lambda w: Bad(
        ["deprecate", "model:tiny", "--reason", " "], "needs a --reason"
    ),
}


def _closed_s3_env() -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        # botocore and s3fs retry a refused connection for ~15-50 s by default
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
    }


# Cases that read or write catalogue rows run on both databases; the rest fail on the input
# alone, before any row is read, and run on SQLite.
DB_CASES = {
    "alias on an unknown concept",
    "alias set on prod",
    "promote without evidence or approval",
    "approve an unknown vector",
    "a concept name that is not UTF-8",
    "a description that is not UTF-8",
    "a family of 101 characters",
    "a hook point of 101 characters",
    "a NUL in a description",
    "an id over 2^63 (show)",
    "an id over 2^63 (export)",
    "a model id over 2^31",
    "a version over 2^31",
    "unknown model (register vector)",
    "unknown model (show)",
    "unknown concept (register vector)",
    "unknown concept (show)",
    "unknown concept version (show)",
    "unknown concept version (register vector)",
    "unknown vector (export)",
    "unknown map",
    "vector with different values, no --replace",
    "model re-registered with another shape while in use",
    "export into a missing folder",
    "unknown policy (show)",
    "policy for an unknown model",
}


def _check_bad_input(world: World, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = BAD_INPUT[case](world)
    monkeypatch.delenv("CRX_S3_ENDPOINT_URL", raising=False)
    before = snapshot(world)
    for key, value in bad.env.items():
        monkeypatch.setenv(key, value)
    line = user_error(world.run(*bad.args, db=bad.db, store=bad.store))
    assert bad.expect in line
    assert "s3cret" not in line
    assert snapshot(world) == before


@pytest.mark.parametrize("case", [case for case in BAD_INPUT if case not in DB_CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(
    populated_sqlite: World, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_bad_input(populated_sqlite, case, monkeypatch)


@pytest.mark.parametrize("case", sorted(DB_CASES))
def test_bad_input_on_each_database(
    populated: World, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_bad_input(populated, case, monkeypatch)


def test_out_of_date_database_is_refused_until_upgraded(populated: World) -> None:
    w = populated
    before = snapshot(w)
    engine = make_engine(w.db)

    def set_revision(revision: str) -> None:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{revision}'")

    set_revision("0000")
    try:
        for args in (
            ["list", "models"],
            ["show", "model", "tiny"],
            ["register", "concept", "joy2", "--pairs", str(w.pairs)],
            ["register", "model", "tiny2", "--path", str(w.model_dir)],
            ["export", "vector", "1", "-o", str(w.tmp / "v.safetensors")],
            ["store", "verify"],
            ["store", "gc", "--yes", "--grace", "0"],
        ):
            line = user_error(w.run(*args))
            assert "schema revision 0000" in line, args
            assert "back up the database, then run `crx db upgrade`" in line, args
        assert w.json("db", "current") == {
            "current": "0000",
            "head": HEAD_REVISION,
            "up_to_date": False,
        }
        assert "run `crx db upgrade`" in w.ok("db", "current").stdout
        assert not (w.tmp / "v.safetensors").exists()
    finally:
        set_revision(HEAD_REVISION)
        engine.dispose()
    assert snapshot(w) == before


def test_corrupt_or_missing_blob_fails_loads_naming_the_oid(populated_sqlite: World) -> None:
    w = populated_sqlite
    oid, vector_id = w.facts["vector_oid"], str(w.facts["vector_id"])
    path = w.blob_path(oid)
    path.chmod(0o644)
    path.write_bytes(b"not the bytes that were stored")
    before = snapshot(w)
    # the record is metadata: show still works
    assert w.json("show", "vector", vector_id)["oid"] == oid
    for fmt in ("safetensors", "gguf"):
        out = w.tmp / f"v.{fmt}"
        line = user_error(w.run("export", "vector", vector_id, "--format", fmt, "-o", str(out)))
        assert f"blob {oid} is corrupt" in line
        assert "crx store verify" in line
        assert not out.exists()
    map_blob = w.blob_path(w.facts["map_oid"])
    map_blob.chmod(0o644)
    map_blob.unlink()
    before = snapshot(w)
    path.unlink()
    line = user_error(w.run("export", "vector", vector_id, "-o", str(w.tmp / "v.safetensors")))
    assert f"blob {oid} is missing" in line
    gone = str(path.relative_to(w.store))
    assert snapshot(w) == {**before, "blob_files": before["blob_files"] - {gone}}


# -- usage errors exit 2 --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["register", "concept", "joy", "--emotion"],  # --emotion without its value
        ["register", "vector", "joy", "--file", "v.safetensors"],  # missing --model
        ["register", "model", "tiny", "--path", "x", "--role", "chief"],
        ["register", "model", "tiny", "--path", "x", "--tag", "novalue"],
        ["list", "modelz"],
        ["frobnicate"],
        ["show", "vector", "abc"],
        ["list", "models", "--limit", "-1"],
        ["export", "vector", "1", "--format", "onnx", "-o", "x"],
        ["export", "vector", "1", "--layer", "-1"],
        ["store", "gc", "--grace", "-5"],
    ],
)
def test_usage_errors_exit_2(sqlite_world: World, args: list[str]) -> None:
    before = sqlite_world.blob_files()
    usage_error(sqlite_world.run(*args))
    assert sqlite_world.blob_files() == before


def test_paging_past_any_id_is_an_empty_page(populated: World) -> None:
    """``--after`` or ``--limit`` beyond any id: the same empty answer on both backends."""
    for args in (["--after", str(2**70)], ["--after", str(2**40)], ["--limit", str(2**70)]):
        result = populated.run("list", "vectors", "--json", *args)
        assert result.exit_code == 0, result.output
        items = json.loads(result.stdout)["items"]
        assert items == [] if args[0] == "--after" else len(items) == 1


def test_an_unknown_emotion_is_refused_before_anything_is_pulled(
    populated_sqlite: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crx.registry.models import pull as pull_module

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may be downloaded for a mistyped emotion")

    monkeypatch.setattr(pull_module, "_pip_download", no_download)
    line = user_error(populated_sqlite.run("demo", "--emotion", "joy"))
    assert line.startswith("Error: unknown emotion 'joy'")
    home = tmp_path / "crx-home"  # the CRX_HOME of this test (conftest)
    assert not (home / "models").exists()
    assert not (home / "cache").exists()
