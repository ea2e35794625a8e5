"""The shape of a YAML document, checked node by node so that every error names its line.

`antifraud.features.spec` declares the feature spec's shape with these few types and calls `check_shape`
before building anything: unknown keys, missing keys and values of the wrong type are refused with
the file, the line, the key and, for a misspelling, the key that was probably meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import yaml

_TAGS = {
    "str": ("tag:yaml.org,2002:str",),
    "int": ("tag:yaml.org,2002:int",),
    "number": ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"),
}
_WHAT = {"str": "a text", "int": "a whole number", "number": "a number"}


class SpecError(ValueError):
    """The feature spec is malformed; the message names the file, the line and the key."""


@dataclass(frozen=True)
class Scalar:
    """A scalar of one kind ("str", "int" or "number"), optionally checked further by `check`,
    which raises SpecError (or ValueError) with a message for the value."""

    kind: str
    check: Callable[[str], object] | None = None


@dataclass(frozen=True)
class ListOf:
    """A sequence whose items all have the shape `item`."""

    item: Shape


@dataclass(frozen=True)
class MapOf:
    """A mapping with free text keys (names chosen by the author) and values of shape `value`."""

    value: Shape


@dataclass(frozen=True)
class Record:
    """A mapping with a fixed set of keys: all of `required`, any of `optional`, nothing else."""

    required: Mapping[str, Shape]
    optional: Mapping[str, Shape] = field(default_factory=dict)


@dataclass(frozen=True)
class ListOrRecord:
    """Either a sequence of shape `listed` or a mapping of shape `record` (a short form and a long
    one, e.g. an entity's key fields alone or with more)."""

    listed: ListOf
    record: Record


Shape = Scalar | ListOf | MapOf | Record | ListOrRecord


def check_shape(node: yaml.Node, shape: Shape, path: str, where: str) -> None:
    """Raise SpecError at the first node of `node` (composed YAML) that does not have `shape`."""

    def fail(at: yaml.Node, message: str) -> SpecError:
        return SpecError(f"{path}:{at.start_mark.line + 1}: {where}: {message}")

    if isinstance(shape, ListOrRecord):
        shape = shape.listed if isinstance(node, yaml.SequenceNode) else shape.record
    if isinstance(shape, Scalar):
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _TAGS[shape.kind]:
            raise fail(node, f"expected {_WHAT[shape.kind]}, got {_describe(node)}")
        if shape.check is not None:
            try:
                shape.check(node.value)
            except ValueError as exc:
                raise fail(node, str(exc)) from exc
        return
    if isinstance(shape, ListOf):
        if not isinstance(node, yaml.SequenceNode):
            raise fail(node, f"expected a list, got {_describe(node)}")
        for i, item in enumerate(node.value):
            check_shape(item, shape.item, path, f"{where}[{i}]")
        return
    if not isinstance(node, yaml.MappingNode):
        raise fail(node, f"expected a mapping, got {_describe(node)}")
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key in seen:
            raise fail(key_node, f"key {key!r} appears twice")
        seen.add(key)
        if isinstance(shape, MapOf):
            check_shape(value_node, shape.value, path, f"{where}.{key}")
            continue
        known = {**shape.required, **shape.optional}
        if key not in known:
            guess = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            raise fail(key_node, f"unknown key {key!r}{hint} (known: {', '.join(known)})")
        check_shape(value_node, known[key], path, f"{where}.{key}")
    if isinstance(shape, Record):
        missing = [k for k in shape.required if k not in seen]
        if missing:
            raise fail(node, f"missing {', '.join(repr(k) for k in missing)}")


def key_line(node: yaml.Node, key: str) -> int:
    """1-based line of `key` in the mapping `node` (the mapping's own line when absent)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if key_node.value == key:
                return int(key_node.start_mark.line) + 1
    return int(node.start_mark.line) + 1


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return repr(node.value)
