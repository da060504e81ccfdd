"""Loading a registered (or any) causal LM and its tokenizer with transformers.

float32 on CPU; on a GPU, bf16 with ``device_map="auto"``. ``trust_remote_code`` is off unless
the caller asks. A GGUF model is converted once to a plain safetensors folder under
``$CRX_HOME/cache/converted/<sha256>`` (dequantised float32, bit-identical logits) and loaded from
there afterwards: 2-5 s instead of 20-60 s.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crx.registry.config import crx_home
from crx.registry.engine.layers import find_layers
from crx.registry.errors import CrxError
from crx.registry.progress import Progress


class ModelLoadError(CrxError):
    def __init__(self, what: str, why: str) -> None:
        self.what, self.why = what, why
        super().__init__(f"cannot load model {what}: {why}")


@dataclass
class LoadedModel:
    """A model ready for hooks: the module, its tokenizer and its decoder blocks."""

    name: str
    model: Any
    tokenizer: Any
    layers: Any  # torch.nn.ModuleList

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def d_model(self) -> int:
        config = self.model.config
        config = getattr(config, "text_config", None) or config
        return int(getattr(config, "hidden_size", None) or config.n_embd)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def convert_gguf(folder: Path, gguf_file: str, out_dir: Path) -> Path:
    """Dequantise a GGUF model once into a safetensors folder (written aside, then renamed)."""
    from crx.registry.models.pull import convert_gguf as load_gguf

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=out_dir.parent))
    try:
        model, tokenizer = load_gguf(folder / gguf_file)
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        if out_dir.exists():
            shutil.rmtree(work)
        else:
            work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def load_model(
    path: str,
    *,
    name: str | None = None,
    gguf_file: str | None = None,
    gguf_sha256: str | None = None,
    revision: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> LoadedModel:
    """Load a causal LM from a local folder, a hub id, or a GGUF file inside a folder.

    ``progress(done, 3)`` after each step: the imports and a GGUF's conversion, the tokenizer,
    the weights (no finer measure: transformers loads them in one call).
    """
    report: Progress = progress or (lambda done, total: None)
    report(0, 3)  # before the imports: torch and transformers take seconds to import
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    label = name or path
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # crx shows its own progress; keep stderr readable
    try:
        source: str | Path = path
        if gguf_file:
            key = gguf_sha256 or Path(path, gguf_file).resolve().as_posix().replace("/", "_")
            cached = crx_home() / "cache" / "converted" / key
            if not (cached / "config.json").exists():
                convert_gguf(Path(path), gguf_file, cached)
            source = cached
        report(1, 3)
        cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if revision:
            kwargs["revision"] = revision
        if cuda:
            kwargs.update(dtype=torch.bfloat16, device_map="auto" if device is None else device)
        else:
            kwargs.update(dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(
            source, **{k: v for k, v in kwargs.items() if k in ("trust_remote_code", "revision")}
        )
        report(2, 3)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except CrxError:
        raise
    except Exception as exc:
        raise ModelLoadError(label, _first_line(exc)) from None
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    report(3, 3)
    return LoadedModel(name=label, model=model, tokenizer=tokenizer, layers=find_layers(model))
