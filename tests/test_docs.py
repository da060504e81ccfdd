"""Every ``crx`` command documents itself: help text, an example, and a place in the README.

The command tree is walked from ``crx.cli.main.cli``, so a command added later is checked without
touching this file: it fails here until it has help with an ``Example`` and the README names it
(``crx <group> <command>``, as in the "Command reference" table).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from crx.cli.main import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def walk(
    command: click.Command, path: tuple[str, ...], parent: click.Context | None = None
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """(path, command) for ``command`` and everything under it, hidden commands left out."""
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path[-1], parent=parent)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, (*path, name), ctx)


TREE = dict(walk(cli, ("crx",)))
LEAVES = {path: cmd for path, cmd in TREE.items() if not isinstance(cmd, click.Group)}


def _id(path: tuple[str, ...]) -> str:
    return " ".join(path)


def test_the_tree_is_walked() -> None:
    # a guard against a walk that silently finds nothing
    for expected in ("crx init", "crx register concept", "crx store gc", "crx list audit"):
        assert tuple(expected.split()) in LEAVES
    assert ("crx", "register") in TREE
    assert ("crx", "register") not in LEAVES


@pytest.mark.parametrize("path", list(TREE), ids=_id)
def test_every_command_and_group_has_help(path: tuple[str, ...]) -> None:
    command = TREE[path]
    assert (command.help or "").strip(), f"`{_id(path)}` has no help text"


@pytest.mark.parametrize("path", list(LEAVES), ids=_id)
def test_every_command_has_an_example(path: tuple[str, ...]) -> None:
    assert "Example" in (LEAVES[path].help or ""), f"`{_id(path)} --help` shows no example"


@pytest.mark.parametrize("path", list(LEAVES), ids=_id)
def test_every_command_is_in_the_readme(path: tuple[str, ...]) -> None:
    name = _id(path)
    assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", README), (
        f"README.md does not mention `{name}` (add it to the Command reference)"
    )


@pytest.mark.parametrize("path", list(TREE), ids=_id)
def test_help_renders(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path[1:], "--help"], prog_name="crx")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: {_id(path)} ")
    if path in LEAVES:
        assert "Example" in result.stdout


def test_the_readme_layout_names_every_package_and_module_of_the_library() -> None:
    """The layout table names every subpackage of ``registry/`` and every top-level module."""
    root = Path(__file__).resolve().parent.parent / "registry"
    layout = README[README.index("### Layout") :]  # the last section of the README
    packages = sorted(p.parent.name for p in root.glob("*/__init__.py"))
    modules = sorted(p.stem for p in root.glob("*.py") if p.stem not in ("__init__", "api"))
    assert len(packages) >= 8
    assert "workflows" in packages
    assert [p for p in packages if f"`registry/{p}/`" not in layout] == []
    assert [m for m in modules if f"`{m}`" not in layout] == []
    assert "`registry/api.py`" in layout
