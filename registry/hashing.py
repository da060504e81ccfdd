"""Canonical JSON and its sha256: identities of recipes (concept content, fit settings)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def content_sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()
