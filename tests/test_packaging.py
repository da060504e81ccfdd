"""Packaging: one import name, ``crx``, in the wheel and in use beside a user's own modules.

The wheel is built from a copy of the source tree (so nothing is written into the checkout),
without build isolation (the test environment already has setuptools).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_FOLDERS = ("registry", "schemas", "cli", "migrations")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,  # .ci/typing/crx links back to the root: never follow it
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".*_cache"
        ),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (built,) = (work / "dist").glob("crx-*.whl")
    return built


def test_wheel_installs_one_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert tops == {"crx"}
    info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(info).decode().split() == ["crx"]


def test_wheel_holds_every_module_and_data_file(wheel: Path) -> None:
    """Every tracked file of the library folders is in the wheel under ``crx/``."""
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {"crx/__init__.py", "crx/__main__.py", "crx/py.typed"}
    for folder in LIBRARY_FOLDERS:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                wanted.add("crx/" + path.relative_to(ROOT).as_posix())
    assert wanted - names == set()
    assert "crx/migrations/versions/0001_initial.py" in names
    assert "crx/registry/data/wiki_split.txt" in names


USER_SCRIPT = """
import json, sys
from crx import Registry
from crx.schemas.records import ConceptVersionRecord
import crx

reg = Registry(sys.argv[1], sys.argv[2])
reg.init()
version = reg.register_concept("honesty", sys.argv[3]).record
assert isinstance(version, ConceptVersionRecord)
import schemas, registry, cli  # the user's own modules, untouched by crx
print(json.dumps({"ref": version.ref, "crx": crx.__file__,
                  "mine": [schemas.MINE, registry.MINE, cli.MINE]}))
"""


def _user_folder(tmp_path: Path, pairs_file: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    for name in ("schemas", "registry", "cli"):
        (folder / f"{name}.py").write_text(f"MINE = {name!r}\n")
    (folder / "script.py").write_text(USER_SCRIPT)
    shutil.copy(pairs_file, folder / "pairs.json")
    return folder


def _run_script(folder: Path, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            "script.py",
            f"sqlite:///{folder / 'r.db'}",
            str(folder / "store"),
            "pairs.json",
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_api_runs_beside_a_users_own_schemas_registry_and_cli(
    tmp_path: Path, pairs_file: Path
) -> None:
    folder = _user_folder(tmp_path, pairs_file)
    result = _run_script(folder, dict(os.environ))
    assert result["ref"] == "honesty@1"
    assert result["mine"] == ["schemas", "registry", "cli"]


def test_installed_wheel_runs_the_api_and_the_command(
    wheel: Path, tmp_path: Path, pairs_file: Path
) -> None:
    """The wheel alone (its migrations and data included) serves the API and ``python -m crx``."""
    site = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    folder = _user_folder(tmp_path, pairs_file)
    result = _run_script(folder, env)
    assert Path(str(result["crx"])).is_relative_to(site)
    assert result["ref"] == "honesty@1"
    help_text = subprocess.run(
        [sys.executable, "-m", "crx", "--help"], cwd=folder, env=env, capture_output=True
    )
    assert help_text.returncode == 0
    assert b"Usage: crx" in help_text.stdout


def test_import_crx_loads_neither_sqlalchemy_nor_torch() -> None:
    code = (
        "import sys, crx, crx.schemas.records, crx.registry.errors;"
        "print(sorted(m for m in ('sqlalchemy', 'torch', 'crx.registry.api') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
