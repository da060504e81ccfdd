"""Loading a registered (or any) causal LM and its tokenizer with transformers.

Where and how a model loads is one `LoadSettings` (the command line's ``--device``, ``--dtype``,
``--max-memory`` and ``--offload-folder``). By default: float32 on CPU; on a GPU, bf16 with
``device_map="auto"``. A memory budget or an offload folder loads through accelerate's
``device_map="auto"`` (one model spread over GPUs, CPU memory and disk; no home-made sharding).
``trust_remote_code`` is off unless the caller asks. A GGUF model is converted once to a plain
safetensors folder under ``$CRX_HOME/cache/converted/<sha256>`` (dequantised float32,
bit-identical logits) and loaded from there afterwards: 2-5 s instead of 20-60 s.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crx.registry.config import crx_home
from crx.registry.engine.layers import find_layers
from crx.registry.errors import CrxError, InvalidInput
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

    label: str = ""  # where and as what it loaded: "cpu, float32"

    @property
    def device(self) -> Any:
        """Where inputs go: the input embeddings' device (a model spread by accelerate moves
        each block's inputs itself; weights offloaded to disk sit on ``meta`` and run on the
        main device)."""
        import torch

        found = self.model.get_input_embeddings().weight.device
        if found.type != "meta":
            return found
        used = set(getattr(self.model, "hf_device_map", {}).values())
        gpus = sorted(d for d in used if isinstance(d, int))
        return torch.device("cuda", gpus[0]) if gpus else torch.device("cpu")

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    @property
    def d_model(self) -> int:
        config = self.model.config
        config = getattr(config, "text_config", None) or config
        return int(getattr(config, "hidden_size", None) or config.n_embd)


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = ("float32", "bfloat16", "float16")
# Binary units first: "GiB" must not be read as "B" after a number "Gi".
_UNITS = (
    ("gib", 2**30), ("mib", 2**20), ("kib", 2**10), ("tib", 2**40),
    ("gb", 10**9), ("mb", 10**6), ("kb", 10**3), ("tb", 10**12), ("b", 1),
)  # fmt: skip


def _parse_size(text: str, part: str) -> int:
    """``20GiB`` → bytes; a bare number is bytes."""
    value = text.strip().lower()
    scale = 1
    for suffix, factor in _UNITS:
        if value.endswith(suffix):
            value, scale = value[: -len(suffix)].strip(), factor
            break
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise InvalidInput(
            f"max memory {part!r}: {text.strip()!r} is not a size (like 20GiB, 512MiB, 8GB)"
        )
    return int(number * scale)


def _memory_key(text: str, part: str) -> int | str:
    key = text.strip().lower()
    if key.isdigit():
        return int(key)
    if key.startswith("cuda:") and key[5:].isdigit():
        return int(key[5:])
    if key in ("cpu", "mps"):
        return key
    raise InvalidInput(
        f"max memory {part!r}: {text.strip()!r} is not a device (a GPU number such as 0, "
        "cpu or mps)"
    )


def parse_max_memory(text: str | Mapping[Any, Any]) -> tuple[tuple[int | str, int], ...]:
    """``"0=20GiB,1=20GiB,cpu=64GiB"`` (or accelerate's dict) → ``((0, bytes), ...)``.

    Each bad part is named in the error, so a typo in a long budget is found at once.
    """
    if isinstance(text, Mapping):
        pairs = [(str(k), str(v)) for k, v in text.items()]
    else:
        pairs = []
        for part in text.split(","):
            if not part.strip():
                continue
            key, sep, size = part.partition("=")
            if not sep:
                raise InvalidInput(
                    f"max memory {part.strip()!r}: write DEVICE=SIZE (like 0=20GiB or cpu=64GiB)"
                )
            pairs.append((key, size))
    if not pairs:
        raise InvalidInput("max memory is empty: give DEVICE=SIZE[,DEVICE=SIZE...]")
    out: dict[int | str, int] = {}
    for key, size in pairs:
        part = f"{key.strip()}={size.strip()}"
        device = _memory_key(key, part)
        if device in out:
            raise InvalidInput(f"max memory {part!r}: device {key.strip()} is given twice")
        out[device] = _parse_size(size, part)
    return tuple(out.items())


@dataclass(frozen=True)
class LoadSettings:
    """Where and how models load: one value, from the command line or the Python API.

    - ``device``: ``auto`` (CUDA when torch sees it, else CPU), ``cpu``, ``cuda`` (every visible
      GPU, accelerate's ``device_map="auto"``), ``cuda:N`` (that GPU) or ``mps``;
    - ``dtype``: ``float32``, ``bfloat16``, ``float16`` or None (bf16 on CUDA, else float32).
      float16 on a CPU is allowed (torch runs it, slowly; bfloat16 is the better half size);
    - ``max_memory``: a budget per device, ``"0=20GiB,1=20GiB,cpu=64GiB"`` or accelerate's
      dict; the devices it names are the only ones used, and what does not fit goes to
      ``offload_folder`` (disk);
    - ``offload_folder``: where accelerate writes the weights that fit nowhere else.

    Either of the last two loads through accelerate's ``device_map="auto"``. Values are checked
    here (`InvalidInput` naming the bad part); whether the device exists, by `check_device`.
    """

    device: str = "auto"
    dtype: str | None = None
    max_memory: tuple[tuple[int | str, int], ...] | None = None
    offload_folder: str | None = None

    def __post_init__(self) -> None:
        device = self.device.strip().lower()
        if not (device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit())):
            raise InvalidInput(
                f"device must be one of {', '.join(DEVICES)} (N a GPU number), not {self.device!r}"
            )
        object.__setattr__(self, "device", device)
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InvalidInput(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.max_memory is not None:
            for key, _ in self.max_memory:
                if not self._allows(key):
                    raise InvalidInput(
                        f"max memory names {_device_name(key)}, which device {device} does not "
                        f"use (device {device} takes {self._allowed_text()})"
                    )
        if self.offload_folder is not None:
            folder = Path(self.offload_folder).expanduser()
            if folder.exists() and not folder.is_dir():
                raise InvalidInput(f"offload folder {folder} exists and is not a folder")
            object.__setattr__(self, "offload_folder", str(folder))

    @classmethod
    def parse(
        cls,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_memory: str | Mapping[Any, Any] | None = None,
        offload_folder: str | Path | None = None,
    ) -> LoadSettings:
        """Settings from text (the command line's options); None keeps each default."""
        return cls(
            device=device or "auto",
            dtype=dtype,
            max_memory=None if max_memory is None else parse_max_memory(max_memory),
            offload_folder=None if offload_folder is None else str(offload_folder),
        )

    @property
    def accelerated(self) -> bool:
        """Whether the load goes through accelerate's ``device_map="auto"`` with a budget."""
        return self.max_memory is not None or self.offload_folder is not None

    def _allows(self, key: int | str) -> bool:
        if self.device == "cpu":
            return key == "cpu"
        if self.device == "mps":
            return key in ("mps", "cpu")
        if self.device == "cuda":
            return isinstance(key, int) or key == "cpu"
        if self.device.startswith("cuda:"):
            return key in (int(self.device[5:]), "cpu")
        return True

    def _allowed_text(self) -> str:
        return {
            "cpu": "cpu only",
            "mps": "mps and cpu",
            "cuda": "GPU numbers and cpu",
        }.get(self.device, f"{self.device[5:]} and cpu")


def _device_name(key: int | str) -> str:
    return f"GPU {key}" if isinstance(key, int) else str(key)


def check_device(settings: LoadSettings) -> None:
    """Refuse a device this torch cannot use, before anything is loaded or recorded.

    torch is imported only for a device other than ``cpu`` and ``auto`` (or a budget naming a
    GPU): ``--device cpu`` costs nothing.
    """
    wants_gpu = settings.device.startswith("cuda") or any(
        isinstance(key, int) for key, _ in settings.max_memory or ()
    )
    if wants_gpu:
        import torch

        if not torch.cuda.is_available():
            what = (
                f"device {settings.device}"
                if settings.device != "auto"
                else "a max memory budget for a GPU"
            )
            raise InvalidInput(
                f"{what} needs CUDA, and this torch ({torch.__version__}) sees no CUDA GPU: "
                "install a CUDA build of torch (README: GPUs and big models) or use --device cpu"
            )
        count = torch.cuda.device_count()
        wanted = [int(settings.device[5:])] if settings.device.startswith("cuda:") else []
        wanted += [key for key, _ in settings.max_memory or () if isinstance(key, int)]
        for index in wanted:
            if index >= count:
                raise InvalidInput(f"GPU {index} does not exist: torch sees {count} GPU(s)")
    if settings.device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise InvalidInput("device mps needs Apple's Metal backend, which this torch lacks")


@dataclass(frozen=True)
class LoadPlan:
    """How `LoadSettings` resolve on this machine: ``from_pretrained``'s arguments and a label."""

    kwargs: dict[str, Any]
    label: str  # "cpu, float32"; "device_map auto over 0, 1, cpu, disk, bfloat16"


def _device(settings: LoadSettings) -> str:
    import torch

    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def resolved_dtype(settings: LoadSettings) -> str:
    """The dtype ``settings`` load a model in here: the one asked, else bfloat16 on CUDA and
    float32 elsewhere."""
    if settings.dtype:
        return settings.dtype
    return "bfloat16" if _device(settings).startswith("cuda") else "float32"


def plan_load(settings: LoadSettings) -> LoadPlan:
    """The ``dtype``, ``device_map``, ``max_memory`` and ``offload_folder`` to load with."""
    import torch

    check_device(settings)
    device = _device(settings)
    dtype_name = resolved_dtype(settings)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype_name)}
    if settings.accelerated:
        from accelerate.utils import get_max_memory

        if settings.max_memory is not None:
            budget: dict[int | str, int] = dict(settings.max_memory)
        else:  # every device this setting uses, with what is free on each
            free = get_max_memory()
            budget = {
                k: v
                for k, v in free.items()
                if settings._allows(k) and (device != "cpu" or k == "cpu")
            }
            if not budget:  # mps and integrated GPUs report no separate CPU budget
                import psutil

                budget = {"cpu": psutil.virtual_memory().available}
        kwargs.update(device_map="auto", max_memory=budget)
        where = [_device_name(k) if isinstance(k, int) else k for k in budget]
        if settings.offload_folder is not None:
            kwargs["offload_folder"] = settings.offload_folder
            where.append("disk")
        label = f"accelerate device_map over {' + '.join(where)}, {dtype_name}"
    elif device == "cuda":
        kwargs["device_map"] = "auto"
        label = f"cuda (device_map auto), {dtype_name}"
    elif device != "cpu":
        kwargs["device_map"] = device
        label = f"{device}, {dtype_name}"
    else:
        label = f"cpu, {dtype_name}"
    return LoadPlan(kwargs=kwargs, label=label)


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
    settings: LoadSettings | None = None,
    plan: LoadPlan | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> LoadedModel:
    """Load a causal LM from a local folder, a hub id, or a GGUF file inside a folder.

    ``settings`` (or their ``plan``, when the caller resolved them already) say where and as
    what. ``progress(done, 3)`` after each step: the imports and a GGUF's conversion, the
    tokenizer, the weights (no finer measure: transformers loads them in one call).
    """
    report: Progress = progress or (lambda done, total: None)
    report(0, 3)  # before the imports: torch and transformers take seconds to import
    from transformers import AutoModelForCausalLM, AutoTokenizer

    label = name or path
    how = plan or plan_load(settings or LoadSettings())
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
        common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if revision:
            common["revision"] = revision
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        report(2, 3)
        model = AutoModelForCausalLM.from_pretrained(source, **common, **how.kwargs)
    except CrxError:
        raise
    except Exception as exc:
        why = _first_line(exc)
        if not gguf_file and not Path(path).expanduser().exists():  # a hub id
            from crx.registry.models.hub import offline

            why += (
                " (HF_HUB_OFFLINE is set: only the local Hugging Face cache is read; unset it "
                "to download)"
                if offline()
                else " (without the hub, HF_HUB_OFFLINE=1 loads from the local cache)"
            )
        raise ModelLoadError(label, why) from None
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    report(3, 3)
    placed = how.label
    device_map = getattr(model, "hf_device_map", None)  # set when accelerate spread the model
    if device_map:
        counts = Counter(
            _device_name(d) if isinstance(d, int) else str(d) for d in device_map.values()
        )
        placed += "; modules: " + ", ".join(f"{n} on {where}" for where, n in counts.items())
    return LoadedModel(
        name=label, model=model, tokenizer=tokenizer, layers=find_layers(model), label=placed
    )
