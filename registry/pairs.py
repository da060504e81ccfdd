"""Contrast-pair files: parsing the formats users bring, and one canonical stored form.

Accepted: JSON (a list of ``{"positive", "negative"}`` objects, or ConTrans' ``{"pos": [...],
"neg": [...]}``), JSONL (one object per line) and CSV with ``positive,negative`` columns. The
stored form is canonical JSON, so the same pairs give the same oid whatever file they came in.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crx.registry.errors import InvalidInput, PairsFileError
from crx.registry.inputs import read_bytes

MAX_PAIRS_FILE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class ContrastPair:
    positive: str
    negative: str


def parse_pairs_file(path: str | Path) -> list[ContrastPair]:
    """Read contrast pairs from ``path``; raise `PairsFileError` with the reason if unusable."""
    path = Path(path)
    where = str(path)
    try:
        data = read_bytes(path, limit=MAX_PAIRS_FILE_BYTES, what="contrast pairs")
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PairsFileError(where, "the file is not UTF-8 text") from None
    except InvalidInput as exc:
        reason = str(exc).removeprefix(f"cannot read contrast pairs {path}: ")
        reason = reason.replace(f"contrast pairs {path} is larger", "the file is larger")
        raise PairsFileError(where, reason) from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        pairs = _from_csv(where, text)
    elif suffix == ".jsonl":
        pairs = _from_jsonl(where, text)
    else:
        pairs = _from_json_or_jsonl(where, text)
    if not pairs:
        raise PairsFileError(where, "it holds no pairs")
    return pairs


def pairs_from_objects(where: str, items: Any) -> list[ContrastPair]:
    """Pairs from already-parsed JSON: a list of pair objects, or ``{"pos": [], "neg": []}``."""
    if isinstance(items, dict):
        keys = ("pos", "neg") if "pos" in items else ("positive", "negative")
        if not all(isinstance(items.get(key), list) for key in keys):
            raise PairsFileError(
                where, 'expected a list of {"positive", "negative"} or {"pos": [...], "neg": [...]}'
            )
        positives, negatives = items[keys[0]], items[keys[1]]
        if len(positives) != len(negatives):
            raise PairsFileError(
                where, f"{len(positives)} positives but {len(negatives)} negatives"
            )
        return [
            _pair(where, i, p, n) for i, (p, n) in enumerate(zip(positives, negatives, strict=True))
        ]
    if not isinstance(items, list):
        raise PairsFileError(where, "expected a JSON list or object")
    if items and all(isinstance(item, str) for item in items):
        # crx's own registry/data/emotions/*.json look like this: scenarios, one text each.
        raise PairsFileError(
            where,
            f"this is a list of {len(items)} texts (scenarios, like crx's emotion data), not "
            'contrast pairs: a pairs file is a list of {"positive": ..., "negative": ...} '
            "objects (for crx's emotions, `crx register concept NAME --emotion EMOTION` builds "
            "the pairs from these scenarios)",
        )
    return [_pair_from_object(where, i, item) for i, item in enumerate(items)]


def _pair_from_object(where: str, index: int, item: Any) -> ContrastPair:
    if not isinstance(item, dict):
        raise PairsFileError(where, f"pair {index + 1} is not an object")
    positive = item.get("positive", item.get("pos"))
    negative = item.get("negative", item.get("neg"))
    return _pair(where, index, positive, negative)


def _pair(where: str, index: int, positive: Any, negative: Any) -> ContrastPair:
    for label, value in (("positive", positive), ("negative", negative)):
        if not isinstance(value, str) or not value.strip():
            raise PairsFileError(where, f"pair {index + 1} has no {label} text")
        try:
            # a JSON escape such as "\ud800" decodes to a lone surrogate, which no UTF-8
            # blob (nor a tokenizer) can hold
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PairsFileError(
                where, f"pair {index + 1}'s {label} text is not valid UTF-8 (a lone surrogate)"
            ) from None
    return ContrastPair(positive, negative)


def _loads(where: str, text: str) -> Any:
    """``json.loads``, with the failures that are not decoding errors made `PairsFileError`:
    nesting too deep for the parser, an integer of more digits than Python converts."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise PairsFileError(where, "the JSON is nested too deeply") from None
    except ValueError as exc:
        raise PairsFileError(where, f"invalid JSON: {exc}") from None


def _from_json_or_jsonl(where: str, text: str) -> list[ContrastPair]:
    try:
        return pairs_from_objects(where, _loads(where, text))
    except json.JSONDecodeError as exc:
        if "Extra data" in exc.msg:
            return _from_jsonl(where, text)
        raise PairsFileError(where, f"invalid JSON at line {exc.lineno}: {exc.msg}") from None


def _from_jsonl(where: str, text: str) -> list[ContrastPair]:
    pairs: list[ContrastPair] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = _loads(where, line)
        except json.JSONDecodeError as exc:
            raise PairsFileError(where, f"invalid JSON on line {number}: {exc.msg}") from None
        pairs.append(_pair_from_object(where, len(pairs), item))
    return pairs


def _from_csv(where: str, text: str) -> list[ContrastPair]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        columns = set(reader.fieldnames or [])
    except csv.Error as exc:
        raise PairsFileError(where, f"invalid CSV: {exc}") from None
    if not {"positive", "negative"} <= columns:
        raise PairsFileError(
            where, f"CSV needs columns positive,negative (found {sorted(columns)})"
        )
    try:
        return [_pair(where, i, row["positive"], row["negative"]) for i, row in enumerate(reader)]
    except csv.Error as exc:
        raise PairsFileError(where, f"invalid CSV: {exc}") from None


def canonical_bytes(pairs: list[ContrastPair]) -> bytes:
    """The stored form: ``{"pairs": [{"negative", "positive"}, ...]}``, compact, sorted keys."""
    document = {"pairs": [{"positive": p.positive, "negative": p.negative} for p in pairs]}
    return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def from_canonical_bytes(data: bytes) -> list[ContrastPair]:
    return [ContrastPair(p["positive"], p["negative"]) for p in json.loads(data)["pairs"]]
