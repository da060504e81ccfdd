"""registry.errors: the `CrxError` tree drawn in its docstring is every subclass in the codebase.

Every module of ``crx.registry``, ``crx.schemas`` and ``crx.cli`` is imported (so classes defined
beside the code that raises them, such as ``models/pull.py``'s, are seen), then each subclass
found through ``__subclasses__`` must stand in the drawn tree under its real parent, with its
file named when it is not ``registry/errors.py``; and the tree names nothing that does not exist.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import crx
import crx.cli
import crx.registry
import crx.schemas
from crx.registry import errors
from crx.registry.errors import CrxError

PACKAGES = (crx.registry, crx.schemas, crx.cli)
# One tree line: the guides (│ ├── └── and spaces), a class name, then what it is and its file.
TREE_LINE = re.compile(r"^(?P<guides>[ │├└─]*)(?P<name>[A-Z]\w*)(?P<rest>.*)$")


def _import_everything() -> list[str]:
    names = []
    for package in PACKAGES:
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
            names.append(info.name)
    return names


def _subclasses(cls: type) -> list[type]:
    """Every subclass of ``cls`` defined in crx, recursively, once each (in the order found);
    other tests may define their own, which do not count."""
    out: dict[type, None] = {}
    for sub in cls.__subclasses__():
        if sub.__module__.split(".")[0] == "crx":
            out[sub] = None
        out.update(dict.fromkeys(_subclasses(sub)))
    return list(out)


def _drawn_tree() -> dict[str, tuple[str | None, str]]:
    """``{class name: (parent name, rest of its line)}`` from the docstring's drawing."""
    doc = errors.__doc__
    assert doc is not None
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "CrxError")
    root_column = lines[start].index("CrxError")
    tree: dict[str, tuple[str | None, str]] = {}
    stack: list[str] = []  # stack[d]: the latest class drawn at depth d
    for line in lines[start:]:
        if not line.strip():
            break
        match = TREE_LINE.match(line)
        assert match, f"not a tree line: {line!r}"
        depth, remainder = divmod(len(match["guides"]) - root_column, 4)
        assert remainder == 0, f"misaligned tree line: {line!r}"
        assert depth <= len(stack), f"tree line deeper than its parent allows: {line!r}"
        name = match["name"]
        assert name not in tree, f"{name} is drawn twice"
        del stack[depth:]
        tree[name] = (stack[-1] if stack else None, match["rest"])
        stack.append(name)
    return tree


def _source_file(cls: type) -> str:
    """The class's file relative to the repository root, e.g. ``registry/models/pull.py``."""
    path = Path(inspect.getfile(cls)).resolve()
    return path.relative_to(Path(crx.__file__).resolve().parent).as_posix()


def test_the_walk_finds_the_classes_defined_beside_their_code() -> None:
    names = _import_everything()
    assert "crx.registry.engine.fit.ridge" in names
    found = {cls.__name__ for cls in _subclasses(CrxError)}
    beside = {"ModelLoadError", "PullError", "UnknownModel", "DownloadFailed", "ChecksumMismatch"}
    assert beside <= found


def test_the_docstring_tree_names_every_crx_error_under_its_parent() -> None:
    _import_everything()
    tree = _drawn_tree()
    assert tree.pop("CrxError")[0] is None
    found = _subclasses(CrxError)
    assert len({cls.__name__ for cls in found}) == len(found), "two CrxError classes share a name"
    for cls in found:
        name = cls.__name__
        assert name in tree, f"{name} ({_source_file(cls)}) is missing from the tree"
        parent, rest = tree[name]
        bases = [b for b in cls.__bases__ if issubclass(b, CrxError)]
        assert len(bases) == 1, f"{name} derives several CrxErrors, which one tree cannot draw"
        base = bases[0]
        assert parent == base.__name__, f"{name} is drawn under {parent}, but derives {base}"
        where = _source_file(cls)
        if where != "registry/errors.py":
            shown = where.removeprefix("registry/")
            assert f"({shown})" in rest, f"{name} should name its file, ({shown})"
    stale = set(tree) - {cls.__name__ for cls in found}
    assert not stale, f"the tree draws classes that do not exist: {sorted(stale)}"
