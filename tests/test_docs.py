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


def _commands_in(line: str) -> list[tuple[str, ...]]:
    """The crx commands an example line runs (``a && crx x y | crx z``), as tree paths."""
    found = []
    for segment in re.split(r"&&|\|", line):
        words = segment.split()
        if "crx" not in words:
            continue
        rest = words[words.index("crx") + 1 :]
        while rest and rest[0].startswith("-"):
            rest = rest[2:]  # a global option and its value: --db URL
        path: tuple[str, ...] = ("crx",)
        for word in rest:
            if (*path, word) not in TREE:
                break
            path = (*path, word)
        found.append(path)
    return found


@pytest.mark.parametrize("path", list(TREE), ids=_id)
def test_every_command_and_group_has_an_example(path: tuple[str, ...]) -> None:
    """Groups too (``crx store --help``): an ``Example:`` block kept as written (after ``\\b``)
    whose lines run real ``crx`` commands, at least one of them under this command."""
    text = TREE[path].help or ""
    assert re.search(r"\x08\n\s*Example:", text), f"`{_id(path)} --help` shows no example"
    block = text.split("Example:", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in block.strip().splitlines()]
    commands = [c for line in lines for c in _commands_in(line)]
    assert commands, f"`{_id(path)} --help` has an example that runs no crx command"
    assert all(c in LEAVES for c in commands), f"`{_id(path)}` example: {commands}"
    assert any(c[: len(path)] == path for c in commands), (
        f"`{_id(path)}`'s example shows none of its own commands"
    )


def test_the_top_level_example_is_a_newcomers_first_steps() -> None:
    """`crx --help` starts where a newcomer is: no model folder yet, so demo and pull."""
    help_text = CliRunner().invoke(cli, ["--help"], prog_name="crx").stdout
    example = help_text.split("Example:", 1)[1].split("\n\n", 1)[0]
    assert "crx demo" in example
    assert "crx models pull" in example
    assert "--path" not in example  # a model folder a newcomer does not have


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
    assert "Example:" in result.stdout


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
