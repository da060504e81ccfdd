"""Reading spec files: YAML → `CatalogSpec`, with every error located at its file and line.

`load_specs` takes one YAML file or a folder of them (``*.yaml`` and ``*.yml``, recursively, in
path order), validates each file against `crx.schemas.spec.SpecFile` and merges them. It checks
syntax, shape and that the named files exist; whether the models and concepts a map, transplant
or evaluation names exist (in the specs or in the registry) is for the caller to decide.

A file whose top-level mapping has a ``kind`` key is one document of that kind instead of a
catalogue: ``kind: policy`` (validated as `crx.schemas.spec.PolicyDocument`) declares one
promotion policy, its key ``policy:NAME``. JSON is YAML too, so a ``.json`` file named
directly works the same (a folder is searched for YAML files only).

YAML is read with a `yaml.SafeLoader` subclass, so no tag can construct a Python object. The
subclass resolves plain scalars as YAML 1.2 does where YAML 1.1 surprises: ``22:13`` is the
string of a layer pair (not the base-60 integer 1333), ``1e-3`` is a number (not a string) and
``2024-01-01`` stays a string. Keys repeated within a mapping are an error, not a silent
overwrite.

Each error is a `SpecError` whose one-line message reads ``FILE:LINE: KEY: WHY``, for example
``specs/catalog.yaml:12: models[0]: unknown key 'pathh' (did you mean 'path'?)``; when a file has
several errors, the first in the file is reported.
"""

from __future__ import annotations

import difflib
import re
import reprlib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from crx.registry.errors import InvalidInput, SpecError
from crx.registry.inputs import MIB, read_bytes
from crx.schemas.spec import SECTIONS, CatalogSpec, PolicyDocument, SpecFile

__all__ = ["LoadedSpecs", "find_spec_files", "load_specs"]

SUFFIXES = (".yaml", ".yml")

MAX_SPEC_FILE_BYTES = 16 * MIB
MAX_SPEC_NODES = 100_000  # values in one spec file once its aliases are expanded
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers and implicit dates (see module docstring)."""

    yaml_implicit_resolvers: ClassVar[dict[Any, list[tuple[Any, Any]]]] = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT, _TIMESTAMP)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_SpecLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
            |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_SpecLoader.add_implicit_resolver(
    _INT,
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
            |[-+]?0[0-7_]+
            |[-+]?(?:0|[1-9][0-9_]*)
            |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)


@dataclass
class LoadedSpecs:
    """The merged catalogue, the files it came from, and where each object was declared.

    ``locations`` maps each object's ``key`` to ``"FILE:LINE"`` of its list item.
    """

    catalog: CatalogSpec
    files: list[Path]
    locations: dict[str, str] = field(default_factory=dict)


def find_spec_files(path: str | Path) -> list[Path]:
    """``path`` itself if it is a file, else the YAML files under it, sorted by path.

    Files and folders whose name starts with ``.`` are skipped (editor backups, ``.git``).
    """
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.exists():
        raise SpecError(root, None, None, "no such file or folder")
    if not root.is_dir():
        raise SpecError(root, None, None, "not a file or folder")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix in SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise SpecError(root, None, None, "no spec files (*.yaml, *.yml) in this folder")
    return files


def load_specs(path: str | Path) -> LoadedSpecs:
    """Parse and validate a spec file or a folder of them into one `CatalogSpec`."""
    files = find_spec_files(path)
    sections: dict[str, list[Any]] = {s: [] for s in SECTIONS}
    policies: list[Any] = []
    locations: dict[str, str] = {}
    for file in files:
        loaded = _load_file(file)
        if loaded is None:
            continue
        root, spec = loaded
        if isinstance(spec, PolicyDocument):
            name_node = _walk(root, ("name",))[2]
            line = _line(name_node if name_node is not None else root)
            if spec.key in locations:
                why = f"{spec.key} is already declared at {locations[spec.key]}"
                raise SpecError(file, line, "name", why)
            locations[spec.key] = f"{file}:{line}"
            policies.append(spec.policy())
            continue
        for section, index, obj in spec.objects():
            line = _line(_walk(root, (section, index))[0])
            where = f"{file}:{line}"
            if obj.key in locations:
                raise SpecError(
                    file,
                    line,
                    f"{section}[{index}]",
                    f"{obj.key} is already declared at {locations[obj.key]}",
                )
            locations[obj.key] = where
            sections[section].append(obj)
    # The objects are validated already (and keys checked above, with locations): this only
    # assembles them; pydantic does not validate model instances again.
    catalog = CatalogSpec(**sections, policies=policies)
    return LoadedSpecs(catalog=catalog, files=files, locations=locations)


def _load_file(file: Path) -> tuple[yaml.Node, SpecFile | PolicyDocument] | None:
    """The composed YAML tree and the validated content of one file; None if it is empty."""
    try:
        data = read_bytes(file, limit=MAX_SPEC_FILE_BYTES, what="spec file")
    except InvalidInput as e:
        raise SpecError(file, None, None, str(e).removeprefix(f"spec file {file} ")) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(file, None, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    loader: _SpecLoader | None = None
    try:
        loader = _SpecLoader(text)  # the reader refuses control characters right here
        root = loader.get_single_node()
        if root is None:  # empty, or only comments: an empty catalogue
            return None
        if not isinstance(root, yaml.MappingNode) or root.tag != "tag:yaml.org,2002:map":
            raise SpecError(
                file,
                _line(root),
                None,
                f"the top level must be a mapping with keys among version, {', '.join(SECTIONS)}"
                " (or a document with kind: policy)",
            )
        _check_size(file, root)
        _check_repeated_keys(file, root)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        why = "; ".join(str(x) for x in (e.context, e.problem) if x)
        line = None if mark is None else mark.line + 1
        raise SpecError(file, line, None, f"bad YAML: {why}") from e
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        why = f"bad YAML: the character {e.character!r} is not allowed"
        raise SpecError(file, line, None, why) from None
    except yaml.YAMLError as e:
        raise SpecError(file, None, None, "bad YAML: " + " ".join(str(e).split())) from e
    except RecursionError:
        raise SpecError(file, None, None, "the YAML is nested too deeply") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise SpecError(file, None, None, f"bad YAML: {e}".split(";")[0]) from None
    finally:
        if loader is not None:
            loader.dispose()
    context = {"base_dir": str(file.parent.absolute()), "check_files": True}
    schema: type[SpecFile | PolicyDocument] = (
        PolicyDocument if isinstance(data, dict) and "kind" in data else SpecFile
    )
    try:
        spec = schema.model_validate(data, context=context)
    except ValidationError as e:
        raise _located(file, root, e.errors(), schema) from None
    return root, spec


def _check_size(file: Path, root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past `MAX_SPEC_NODES` (a "billion laughs" alias
    bomb is a few hundred bytes): sizes are counted once per distinct node, so this costs the
    file's size, not the expansion's."""
    sizes: dict[int, int] = {}
    started: set[int] = set()  # nodes whose children are being counted
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if not children_done:
            if id(node) in started:
                # met again before it was counted: it contains itself (``a: &a [*a]``), which
                # would expand forever
                why = "a YAML alias refers to a value that contains it (a recursive alias)"
                raise SpecError(file, _line(node), None, why)
            started.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        sizes[id(node)] = 1 + sum(sizes.get(id(c), 0) for c in children)
        if sizes[id(node)] > MAX_SPEC_NODES:
            raise SpecError(
                file,
                _line(node),
                None,
                f"the YAML expands to more than {MAX_SPEC_NODES:,} values (aliases?)",
            )


def _check_repeated_keys(file: Path, root: yaml.Node) -> None:
    """Refuse a key given twice in one mapping: YAML loaders keep the last one silently."""
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if id(node) in seen_nodes:  # an alias: already checked (and maybe recursive)
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE:
                    if key_node.value in keys:
                        why = f"key {key_node.value!r} is given twice"
                        raise SpecError(file, _line(key_node), _format_loc(loc) or None, why)
                    keys.add(key_node.value)
                    stack.append((value_node, (*loc, key_node.value)))
                else:
                    stack.append((value_node, loc))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*loc, i)) for i, item in enumerate(node.value))


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _walk(
    root: yaml.Node, loc: Sequence[str | int]
) -> tuple[yaml.Node, tuple[str | int, ...], yaml.Node | None]:
    """Follow a pydantic ``loc`` down the YAML tree as far as it goes.

    Returns the deepest node reached, the part of ``loc`` that led there, and the key node of
    the last mapping step (to point at a key rather than its value).
    """
    node, done, key_node = root, [], None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    node, key_node = v, k
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node, key_node = node.value[part], None
        else:
            break
        done.append(part)
    return node, tuple(done), key_node


def _format_loc(loc: Sequence[str | int]) -> str:
    """``('concepts', 1, 'extraction', 'method')`` → ``concepts[1].extraction.method``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _located(
    file: Path, root: yaml.Node, errors: list[ErrorDetails], schema: type[BaseModel]
) -> SpecError:
    """A `SpecError` for the first (topmost in the file) of pydantic's errors."""
    located = [_locate(file, root, error, schema) for error in errors]
    return min(located, key=lambda e: e.line or 0)


def _locate(file: Path, root: yaml.Node, error: ErrorDetails, schema: type[BaseModel]) -> SpecError:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden" and loc:
        parent, unknown = loc[:-1], loc[-1]
        node, _, key_node = _walk(root, loc)
        line = _line(key_node if key_node is not None else node)
        why = f"unknown key {str(unknown)!r}" + _expected_keys(schema, parent, str(unknown))
        return SpecError(file, line, _format_loc(parent) or None, why)
    if kind == "missing" and loc:
        node, _, _ = _walk(root, loc[:-1])
        return SpecError(
            file, _line(node), _format_loc(loc[:-1]) or None, f"missing key {str(loc[-1])!r}"
        )
    node, _, _ = _walk(root, loc)
    return SpecError(file, _line(node), _format_loc(loc) or None, _reason(error))


#: Plain words for pydantic's type errors (its own text names Python types and classes).
_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _reason(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind in _TYPE_WORDS:
        why = f"must be {_TYPE_WORDS[kind]}"
    elif kind == "literal_error" and "expected" in ctx:
        why = "must be " + str(ctx["expected"]).replace("'", "")
    else:
        message = error["msg"]
        prefix = "Input should be "
        why = "must be " + message.removeprefix(prefix) if message.startswith(prefix) else message
    return f"{why}, not {_short(error.get('input'))}"


def _short(value: Any, limit: int = 60) -> str:
    # reprlib bounds the work, not only the result: a YAML alias bomb makes a value whose full
    # repr would take gigabytes.
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()  # Python 3.11's takes no keyword arguments
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 8, 8, 60, 60


def _expected_keys(schema: type[BaseModel], parent: Sequence[str | int], unknown: str) -> str:
    """A hint after an unknown key: the closest known key, or the list of them."""
    cls = _class_at(schema, parent)
    if cls is None:
        return ""
    known = list(cls.model_fields)
    close = difflib.get_close_matches(unknown, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (expected one of {', '.join(known)})"


def _class_at(schema: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The spec class that validates the mapping at ``loc`` of a spec file, if any."""
    annotation: Any = schema
    for part in loc:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not isinstance(part, str) or part not in annotation.model_fields:
                return None
            annotation = annotation.model_fields[part].annotation
        elif typing.get_origin(annotation) is list and isinstance(part, int):
            annotation = typing.get_args(annotation)[0]
        else:
            return None
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = options[0] if len(options) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
