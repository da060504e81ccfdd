"""Facts about a model read from its config, never from its weights.

Sources, in order: a local folder's ``config.json``; a GGUF file's metadata header (memory-mapped
by the ``gguf`` package, tensors untouched); a hub id resolved to one commit (`crx.registry.models
.hub`: the hub or, with ``HF_HUB_OFFLINE=1``, its local cache), whose config and tokenizer files
are read and hashed like a folder's. ``trust_remote_code`` stays off: a config is data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crx.registry.errors import InvalidInput
from crx.registry.inputs import read_bytes

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # real configs are a few KiB

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "dim")


@dataclass(frozen=True)
class ModelFacts:
    path: str
    gguf_file: str | None
    architecture: str | None
    model_type: str | None
    n_layers: int
    d_model: int
    vocab_size: int | None
    config_sha256: str | None
    tokenizer_sha256: str | None
    weights_sha256: str | None
    revision: str | None = None  # a hub model's resolved commit


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or Path(path).expanduser().exists()


def is_hub_id(path: str) -> bool:
    """Whether a registered path names a hub model (not a local folder or file)."""
    return not _looks_local(path)


def read_model_facts(
    path: str, gguf_file: str | None = None, revision: str | None = None
) -> ModelFacts:
    """Read a model's shape and identity from ``path`` (folder, GGUF file or hub id)."""
    if path.endswith(".gguf") and gguf_file is None:
        gguf_file = Path(path).name
        path = str(Path(path).parent)
    if _looks_local(path):
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise InvalidInput(f"model folder {folder} does not exist")
        if gguf_file:
            return _from_gguf(folder, gguf_file)
        return _from_folder(folder)
    if gguf_file:
        raise InvalidInput(f"--gguf-file needs a local folder, and {path!r} is not one")
    return _from_hub(path, revision)


def _from_folder(folder: Path) -> ModelFacts:
    config_path = folder / "config.json"
    if not config_path.exists() and not config_path.is_symlink():
        raise InvalidInput(f"{folder} has no config.json (is it a transformers model folder?)")
    # a regular file of bounded size only: a config.json linked to /dev/zero read until OOM
    raw = read_bytes(config_path, limit=MAX_CONFIG_BYTES, what="model config")
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"cannot read {config_path}: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"cannot read {config_path}: the JSON is nested too deeply") from None
    if not isinstance(config, dict):
        raise InvalidInput(f"{config_path} is not a JSON object")
    n_layers, d_model, vocab = _shape_from_config(config, str(config_path))
    architectures = config.get("architectures") or [None]
    if not isinstance(architectures, list) or not (
        architectures[0] is None or isinstance(architectures[0], str)
    ):
        raise InvalidInput(f"{config_path}: architectures must be a list of class names")
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise InvalidInput(f"{config_path}: model_type must be a string")
    return ModelFacts(
        path=str(folder),
        gguf_file=None,
        architecture=architectures[0],
        model_type=model_type,
        n_layers=n_layers,
        d_model=d_model,
        vocab_size=vocab,
        config_sha256=hashlib.sha256(raw).hexdigest(),
        tokenizer_sha256=tokenizer_sha256(folder),
        weights_sha256=None,
    )


# Bounds no real model comes near, and that keep a [n_layers, d_model] tensor allocatable.
MAX_LAYERS = 10_000
MAX_WIDTH = 1_000_000
MAX_VOCAB = 100_000_000


def _shape_from_config(config: dict[str, Any], where: str) -> tuple[int, int, int | None]:
    # Multimodal configs (Gemma 3, Llava) keep the language model's shape in text_config.
    text_config = config.get("text_config")
    if text_config is not None and not isinstance(text_config, dict):
        raise InvalidInput(f"{where}: text_config is not an object")
    scopes = [config, text_config or {}]

    def first(keys: tuple[str, ...]) -> tuple[str | None, Any]:
        """The first key holding a whole number; else the first key present (to report it)."""
        present = [(k, scope[k]) for scope in scopes for k in keys if k in scope]
        for key, value in present:
            if isinstance(value, int) and not isinstance(value, bool):
                return key, value
        return present[0] if present else (None, None)

    def count(keys: tuple[str, ...], what: str, top: int) -> int | None:
        key, value = first(keys)
        if key is None:
            return None
        # bool is an int in Python; true is not a layer count.
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise InvalidInput(f"{where}: {key} must be a whole number from 1 to {top:,}")
        return value

    n_layers = count(_LAYER_KEYS, "layer count", MAX_LAYERS)
    d_model = count(_WIDTH_KEYS, "hidden size", MAX_WIDTH)
    if n_layers is None or d_model is None:
        raise InvalidInput(f"{where} names no layer count or hidden size")
    return n_layers, d_model, count(("vocab_size",), "vocabulary size", MAX_VOCAB)


def tokenizer_sha256(folder: Path) -> str | None:
    """One sha256 over the tokenizer files present (name and content of each), or None."""
    entries = [
        f"{name}\0{file_sha256(folder / name)}\n"
        for name in TOKENIZER_FILES
        if (folder / name).is_file()
    ]
    if not entries:
        return None
    return hashlib.sha256("".join(entries).encode()).hexdigest()


def _from_gguf(folder: Path, gguf_file: str) -> ModelFacts:
    file = folder / gguf_file
    if not file.is_file():
        raise InvalidInput(f"GGUF file {file} does not exist")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(file)
        fields = {
            name: field.contents()
            for name, field in reader.fields.items()
            if not name.startswith("tokenizer.ggml.") or name == "tokenizer.ggml.model"
        }
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        n_tokens = len(tokens.data) if tokens is not None else None
    except Exception as exc:
        raise InvalidInput(f"cannot read GGUF metadata from {file}: {exc}") from None
    arch = fields.get("general.architecture")
    n_layers = fields.get(f"{arch}.block_count")
    d_model = fields.get(f"{arch}.embedding_length")
    if not isinstance(n_layers, int) or not isinstance(d_model, int):
        raise InvalidInput(f"{file} names no block count or embedding length for {arch!r}")
    if not (1 <= n_layers <= MAX_LAYERS and 1 <= d_model <= MAX_WIDTH):
        raise InvalidInput(f"{file}: {n_layers} blocks of width {d_model} is not a model shape")
    vocab = fields.get(f"{arch}.vocab_size") or n_tokens
    return ModelFacts(
        path=str(folder),
        gguf_file=gguf_file,
        architecture=f"gguf:{arch}",
        model_type=str(arch),
        n_layers=n_layers,
        d_model=d_model,
        vocab_size=int(vocab) if vocab else None,
        config_sha256=None,
        tokenizer_sha256=tokenizer_sha256(folder),
        weights_sha256=file_sha256(file),
    )


def _from_hub(hub_id: str, revision: str | None) -> ModelFacts:
    from dataclasses import replace

    from crx.registry.models.hub import resolve

    snapshot = resolve(hub_id, revision, ("config.json", *TOKENIZER_FILES))
    facts = _from_folder(snapshot.folder)
    return replace(facts, path=hub_id, revision=snapshot.commit)


def check_hub_pins(hub_id: str, commit: str, config: str | None, tokenizer: str | None) -> None:
    """Before loading ``hub_id`` at its registered ``commit``: its config and tokenizer files
    must hash as registered (``config`` and ``tokenizer``, the recorded sha256s): a cache
    edited by hand is refused, not loaded."""
    from crx.registry.models.hub import resolve

    snapshot = resolve(hub_id, commit, ("config.json", *TOKENIZER_FILES))
    config_file = snapshot.folder / "config.json"
    found = {
        "config.json": file_sha256(config_file) if config_file.is_file() else None,
        "tokenizer files": tokenizer_sha256(snapshot.folder),
    }
    wanted = {"config.json": config, "tokenizer files": tokenizer}
    for what, digest in found.items():
        if wanted[what] is not None and digest != wanted[what]:
            raise InvalidInput(
                f"{hub_id} at commit {commit}: its {what} hash {digest or 'nothing'}, but were "
                f"registered as {wanted[what]}: re-register the model to accept the change"
            )
