"""YAML loading with one-line errors.

PyYAML follows YAML 1.1, where ``1e10`` and ``2.0e10`` (no sign in the exponent) are strings.
Plans are full of such numbers, so our loader also reads them as floats (as YAML 1.2 does).

A plain scalar shaped like a timestamp that is no real date (``2026-13-01``, ``2026-02-30``)
stays a string, so the schema that reads it names the field and what it expected. Flow
collections (``[ ]``, ``{ }``) nested deeper than 64 levels are refused as the scanner meets
them, with the line and column; block nesting deep enough to exhaust the recursion of PyYAML's
composer (a few hundred levels) is an ``InputError`` too ("nesting too deep"). Aliases
(``*name``) share one value, so a "billion laughs" file costs nothing to read, but code that
walks the value would walk every copy: a document of more than ``MAX_YAML_NODES`` values once
aliases are expanded, or with an alias inside the value it names, is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from audit.errors import InputError
from audit.limits import MAX_YAML_NODES


MAX_FLOW_DEPTH = 64
"""Deepest nesting of ``[ ]`` and ``{ }`` read (plans and policy packs use a handful)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e10``, ``2.0e10`` and ``-3E+5`` as floats, an impossible date
    such as ``2026-13-01`` as the string it is (PyYAML raises a bare ``ValueError``), and
    refuses flow collections nested deeper than ``MAX_FLOW_DEPTH``, documents larger than
    ``MAX_YAML_NODES`` once aliases are expanded (a "billion laughs" bomb) and an alias inside
    the collection it names (a recursive value)."""

    def compose_document(self):
        node = super().compose_document()
        problem = _expansion_problem(node, MAX_YAML_NODES)
        if problem:
            raise yaml.composer.ComposerError(None, None, problem, node.start_mark)
        return node

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_FLOW_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"nesting too deep: more than {MAX_FLOW_DEPTH} levels of [ ] or {{ }}",
                self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def construct_yaml_timestamp(self, node):
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError):
            return self.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expansion_problem(root, limit: int) -> str | None:
    """Why the node graph under ``root`` is refused, or None: more than ``limit`` nodes once
    every alias is expanded, or an alias inside the collection it names. Iterative, and each
    node is sized once (aliases share nodes), so a bomb costs its size in the file, not more."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > limit:
                return (f"too large: more than {limit:,} values once aliases (*name) are expanded; "
                        "write the values out or use fewer aliases")
            continue
        if key in sizes:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                return "an alias (*name) inside the value it names: a recursive value"
            if id(child) not in sizes:
                stack.append((child, False))
    return None


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes an ``InputError`` naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"invalid YAML ({problem})", source=source, field=where) from None
    except RecursionError:
        raise InputError("invalid YAML (nesting too deep: lists or mappings inside each other "
                         "deeper than the parser can follow)", source=source) from None


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file; a missing or unreadable file is an ``InputError``."""
    from audit.fsutil import decode_utf8, read_input

    return load_yaml_text(decode_utf8(read_input(path), path), str(path))


def field_positions(text: str, source: str) -> dict[str, tuple[int, int]]:
    """Where each field of a YAML document is written: ``{"teacher.model": (line, column)}``,
    1-based, at the field's key (``organization.jurisdictions[0]`` at a list item). Built from
    the node tree of ``text`` (the same text a loader parsed: call it with the bytes that were
    hashed, never a second read of the file); keys that are not plain strings are left out, and
    an alias shares the position of the value it names. Errors as :func:`load_yaml_text`."""
    try:
        root = yaml.compose(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        raise InputError(f"invalid YAML ({getattr(exc, 'problem', None) or exc})", source=source,
                         field=where) from None
    except RecursionError:
        raise InputError("invalid YAML (nesting too deep)", source=source) from None
    found: dict[str, tuple[int, int]] = {}
    stack = [("", root)] if root is not None else []
    while stack:  # iterative: deep block nesting cannot exhaust the recursion limit here
        path, node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for name, (key, value) in _mapping_keys(node).items():
                child = f"{path}.{name}" if path else name
                if child not in found:
                    found[child] = (key.start_mark.line + 1, key.start_mark.column + 1)
                    stack.append((child, value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = f"{path}[{index}]"
                if child not in found:
                    found[child] = (item.start_mark.line + 1, item.start_mark.column + 1)
                    stack.append((child, item))
    return found


def _mapping_keys(node) -> dict:
    """``{key: (key node, value node)}`` of a mapping as the loader reads it: of two equal keys
    the last wins, and keys merged in with ``<<`` count only where the mapping does not write
    them itself (they keep the position where they are written)."""
    own: dict = {}
    merged: dict = {}
    for key, value in node.value:
        if key.tag == "tag:yaml.org,2002:merge":
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for source in reversed(sources):  # the first mapping listed wins
                if isinstance(source, yaml.MappingNode):
                    merged.update(_mapping_keys(source))
        elif isinstance(key, yaml.ScalarNode) and key.tag == "tag:yaml.org,2002:str":
            own[key.value] = (key, value)  # a repeated key: the last one, as the loader keeps it
    return {**merged, **own}
