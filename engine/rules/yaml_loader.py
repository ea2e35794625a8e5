"""Loading a rule set: a directory of YAML files (and the list files they name), checked as a whole.

Every problem across all files is collected, each with its file, line and rule id, and raised at
once as :class:`RuleSetError`; only a rule set without any problem becomes a :class:`RuleSet`.
The YAML is composed, never constructed: only plain data tags are accepted, and scalars are read
exactly as written (so a BIN 0412 stays '0412'). docs/rules.md describes the format.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from antifraud.engine.rules.errors import ExpressionError, RuleError, RuleSetError
from antifraud.engine.rules.expression import compile_expression
from antifraud.engine.rules.nodes import FieldType
from antifraud.engine.rules.ruleset import (
    ACTIONS,
    DEFAULT_FALLBACK,
    FALLBACKS,
    METADATA_PREFIX,
    METADATA_TYPES,
    MODES,
    SCALES,
    Action,
    Fallback,
    MetadataType,
    Mode,
    Rule,
    RuleSet,
    Scale,
    ScoreBands,
)

_TOP_KEYS: Final = ("score_bands", "authenticated_fallback", "metadata", "lists", "rules")
_BAND_KEYS: Final = ("scale", "challenge", "review", "block", "merchants")
_MERCHANT_BAND_KEYS: Final = ("challenge", "review", "block")
#: the largest threshold per scale
_SCALE_TOP: Final[Mapping[str, float]] = {"score": 1.0, "risk_score": 100.0}
_RULE_KEYS: Final = ("id", "description", "when", "action", "reason", "mode", "merchants")
_RULE_ID: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}$")
_LIST_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_YAML_TAGS: Final = frozenset(
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "timestamp", "seq", "map")
)
_NULL_TAG: Final = "tag:yaml.org,2002:null"


def load_ruleset(directory: str | Path, names: Mapping[str, FieldType]) -> RuleSet:
    """Load every ``*.yaml`` file of a directory as one rule set, checking it as a whole.

    ``names`` maps the names rules may read (payment fields, features) to their types.
    Raises :class:`RuleSetError` listing every problem, each with its file, line and rule id.
    """
    root = Path(directory)
    if not root.is_dir():
        raise RuleSetError([RuleError(str(directory), None, None, "not a directory")])
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    sources: dict[str, str] = {}
    errors: list[RuleError] = []
    for path in files:
        if path.suffix == ".yml":
            errors.append(
                RuleError(path.name, None, None, f"only *.yaml files are read: rename to {path.stem}.yaml")
            )
        elif path.suffix == ".yaml":
            try:
                sources[path.name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                errors.append(RuleError(path.name, None, None, f"cannot read: {e}"))

    resolved_root = root.resolve()

    def read_list(relative: str) -> str:
        path = (root / relative).resolve()
        if not path.is_relative_to(resolved_root):
            raise ValueError("list files must be inside the rules directory")
        return path.read_text(encoding="utf-8")

    return _Loader(str(directory), names, read_list, errors).load(sources)


def ruleset_from_texts(
    files: Mapping[str, str],
    names: Mapping[str, FieldType],
    list_files: Mapping[str, str] | None = None,
) -> RuleSet:
    """Like :func:`load_ruleset` from in-memory texts: {file name: YAML}, {list path: content}."""
    contents = dict(list_files or {})

    def read_list(relative: str) -> str:
        if relative not in contents:
            raise FileNotFoundError(relative)
        return contents[relative]

    return _Loader("<texts>", names, read_list, []).load(dict(files))


def parse_list_file(text: str) -> frozenset[str]:
    """Entries of a list file: one per line, surrounding blanks stripped; '#' starts a comment
    (a whole line, or after a blank); blank lines are ignored."""
    values = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = re.split(r"\s#", line, maxsplit=1)[0].strip()
        if line:
            values.add(line)
    return frozenset(values)


@dataclass
class _RawRule:
    file: str
    line: int
    id: str
    when: yaml.ScalarNode | None = None
    action: Action | None = None
    mode: Mode = "live"
    reason: str | None = None
    description: str | None = None
    merchants: frozenset[str] | None = None
    valid: bool = True  # False: reported (bad or duplicate id); still compiled, to report its `when`


class _Loader:
    """Reads the files one by one, then compiles the rules against every list of every file."""

    def __init__(
        self,
        origin: str,
        names: Mapping[str, FieldType],
        read_list: Callable[[str], str],
        errors: list[RuleError],
    ) -> None:
        self.origin = origin
        self.names = names
        self.read_list = read_list
        self.errors = errors
        self.bands: ScoreBands | None = None
        #: where each one-per-rule-set section (score_bands, authenticated_fallback) was defined
        self.sections_at: dict[str, tuple[str, int]] = {}
        self.scale: Scale = "score"
        self.merchant_bands: dict[str, tuple[dict[str, float | None], str, int]] = {}
        self.fallback: Fallback = DEFAULT_FALLBACK
        self.metadata: dict[str, MetadataType] = {}
        self.metadata_at: dict[str, tuple[str, int]] = {}
        self.lists: dict[str, frozenset[str]] = {}
        self.list_files: dict[str, str] = {}
        self.list_at: dict[str, tuple[str, int]] = {}
        self.rules: list[_RawRule] = []
        self.rule_at: dict[str, tuple[str, int]] = {}
        self.unreadable = False  # a file failed to parse: what it defines is unknown

    def error(self, file: str, node: yaml.Node | None, message: str, rule_id: str | None = None) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.errors.append(RuleError(file, line, rule_id, message))

    def load(self, sources: Mapping[str, str]) -> RuleSet:
        if not sources and not self.errors:
            self.errors.append(RuleError(self.origin, None, None, "no *.yaml files"))
        for file in sorted(sources):
            self.add_file(file, sources[file])
        compiled = self.compile_rules()
        if "score_bands" not in self.sections_at and sources and not self.unreadable:
            self.errors.append(
                RuleError(
                    self.origin, None, None, "score_bands is not defined: one file must give review and block"
                )
            )
        merchant_bands = self.check_merchant_bands()
        if self.errors or self.bands is None:
            raise RuleSetError(sorted(self.errors, key=lambda e: (e.file, e.line or 0)))
        return RuleSet(
            compiled,
            self.lists,
            self.bands,
            merchant_bands,
            scale=self.scale,
            authenticated_fallback=self.fallback,
            metadata=self.metadata,
            files=sorted(sources),
            list_files=self.list_files,
        )

    # -- YAML helpers

    def add_file(self, file: str, text: str) -> None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else None
            self.errors.append(RuleError(file, line, None, f"YAML syntax error: {e.problem or e}"))
            self.unreadable = True
            return
        except yaml.YAMLError as e:
            self.errors.append(RuleError(file, None, None, f"YAML error: {e}"))
            self.unreadable = True
            return
        if root is None:
            return  # an empty file adds nothing
        if not self.check_tags(file, root):
            return
        if not isinstance(root, yaml.MappingNode):
            self.error(file, root, "a rules file is a mapping with score_bands, lists and/or rules")
            return
        for key, key_node, value in self.items(file, root, _TOP_KEYS):
            if key in ("lists", "rules", "metadata") and _is_null(value):
                continue  # a section left empty, e.g. every entry commented out
            if key == "score_bands":
                self.add_bands(file, key_node, value)
            elif key == "authenticated_fallback":
                self.add_fallback(file, key_node, value)
            elif key == "metadata":
                self.add_metadata(file, value)
            elif key == "lists":
                self.add_lists(file, value)
            else:
                self.add_rules(file, value)

    def check_tags(self, file: str, root: yaml.Node) -> bool:
        # Only plain YAML data: a tag such as !!python/object must not reach any constructor.
        seen: set[int] = set()
        stack = [root]
        ok = True
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.tag not in _YAML_TAGS:
                self.error(file, node, f"unsupported YAML tag {node.tag}")
                ok = False
            if isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
            elif isinstance(node, yaml.MappingNode):
                stack.extend(n for pair in node.value for n in pair)
        return ok

    def items(
        self, file: str, node: yaml.MappingNode, known: Sequence[str] | None, rule_id: str | None = None
    ) -> Iterator[tuple[str, yaml.ScalarNode, yaml.Node]]:
        """(key, key node, value node) of a mapping; reports bad, duplicate and unknown keys."""
        seen: set[str] = set()
        for key_node, value in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(file, key_node, "keys must be plain text", rule_id)
                continue
            key = key_node.value
            if key in seen:
                self.error(file, key_node, f"duplicate key '{key}'", rule_id)
                continue
            seen.add(key)
            if known is not None and key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = (
                    f" (did you mean '{close[0]}'?)" if close else f" (expected one of: {', '.join(known)})"
                )
                self.error(file, key_node, f"unknown key '{key}'{hint}", rule_id)
                continue
            yield key, key_node, value

    def text(self, file: str, node: yaml.Node, what: str, rule_id: str | None = None) -> str | None:
        """The text of a scalar, exactly as written (so 0412 stays '0412'); None after an error."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL_TAG:
            self.error(file, node, f"{what} must be a single value", rule_id)
            return None
        return str(node.value)

    def threshold(self, file: str, node: yaml.Node, what: str) -> float | None:
        text = self.text(file, node, what)
        if text is None:
            return None
        top = _SCALE_TOP[self.scale]
        try:
            value = float(text) if node.tag != "tag:yaml.org,2002:bool" else None
        except ValueError:
            value = None
        if value is None or not 0.0 <= value <= top:
            hint = " (the bands are on the risk_score scale)" if self.scale == "risk_score" else ""
            self.error(file, node, f"{what} must be a number between 0 and {top:g}{hint}, not {text!r}")
            return None
        return value

    # -- sections

    def first_definition(self, file: str, key_node: yaml.Node, section: str) -> bool:
        """Whether this is the first definition of a section a rule set has once (else an error)."""
        if (at := self.sections_at.get(section)) is not None:
            where = f"{at[0]}:{at[1]}"
            self.error(file, key_node, f"{section} is already defined at {where}: define it in one file")
            return False
        self.sections_at[section] = (file, key_node.start_mark.line + 1)
        return True

    def add_bands(self, file: str, key_node: yaml.Node, node: yaml.Node) -> None:
        if not self.first_definition(file, key_node, "score_bands"):
            return
        if not isinstance(node, yaml.MappingNode):
            self.error(file, node, "score_bands is a mapping with review, block and optional merchants")
            return
        # the scale first: every threshold of the mapping (merchants' too) is read on it
        for key_node, value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == "scale":
                self.scale = self.choice(file, value, "score_bands.scale", SCALES, None) or "score"  # type: ignore[assignment]
        values: dict[str, float | None] = {"challenge": None, "review": None, "block": None}
        given: set[str] = set()
        for key, _, value in self.items(file, node, _BAND_KEYS):
            if key == "merchants":
                self.add_merchant_bands(file, value)
            elif key != "scale":
                given.add(key)
                values[key] = self.threshold(file, value, f"score_bands.{key}")
        for key in ("review", "block"):
            if key not in given:
                self.error(file, node, f"score_bands.{key} is required")
        if "challenge" in given and values["challenge"] is None:
            return  # reported
        bands = _bands(values["challenge"], values["review"], values["block"])
        if isinstance(bands, str):
            self.error(file, node, f"score_bands: {bands}")
        elif bands is not None:
            self.bands = bands

    def add_fallback(self, file: str, key_node: yaml.Node, node: yaml.Node) -> None:
        if not self.first_definition(file, key_node, "authenticated_fallback"):
            return
        chosen = self.choice(file, node, "authenticated_fallback", FALLBACKS, None)
        if chosen is not None:
            self.fallback = chosen  # type: ignore[assignment]

    def add_metadata(self, file: str, node: yaml.Node) -> None:
        from antifraud.engine.schema import METADATA_KEY_PATTERN  # on use: the schema pulls in pydantic

        if not isinstance(node, yaml.MappingNode):
            self.error(file, node, "metadata maps the keys rules read to a type: string | number | bool")
            return
        for key, key_node, value in self.items(file, node, None):
            if not re.match(METADATA_KEY_PATTERN, key):
                self.error(file, key_node, f"bad metadata key '{key}': keys match {METADATA_KEY_PATTERN}")
                continue
            if key in self.metadata_at:
                first = "{}:{}".format(*self.metadata_at[key])
                self.error(file, key_node, f"metadata key '{key}' is already declared at {first}")
                continue
            chosen = self.choice(file, value, f"metadata.{key} type", METADATA_TYPES, None)
            if chosen is not None:
                self.metadata_at[key] = (file, key_node.start_mark.line + 1)
                self.metadata[key] = chosen  # type: ignore[assignment]

    def add_merchant_bands(self, file: str, node: yaml.Node) -> None:
        if not isinstance(node, yaml.MappingNode):
            self.error(file, node, "score_bands.merchants maps merchant ids to {challenge, review, block}")
            return
        for merchant, key_node, value in self.items(file, node, None):
            if not isinstance(value, yaml.MappingNode):
                self.error(file, value, f"merchant {merchant}: give {{review: .., block: ..}}")
                continue
            found: dict[str, float | None] = {}
            for key, _, threshold in self.items(file, value, _MERCHANT_BAND_KEYS):
                found[key] = self.threshold(file, threshold, f"merchant {merchant} {key}")
            if not found:
                self.error(file, value, f"merchant {merchant}: give challenge, review and/or block")
            self.merchant_bands[merchant] = (found, file, key_node.start_mark.line + 1)

    def check_merchant_bands(self) -> dict[str, ScoreBands]:
        out: dict[str, ScoreBands] = {}
        if self.bands is None:
            return out
        for merchant, (found, file, line) in self.merchant_bands.items():
            if any(v is None for v in found.values()):
                continue  # reported
            # a threshold left out is inherited from the default bands
            bands = _bands(
                found.get("challenge", self.bands.challenge),
                found.get("review", self.bands.review),
                found.get("block", self.bands.block),
            )
            if isinstance(bands, str):
                self.errors.append(RuleError(file, line, None, f"merchant {merchant}: {bands}"))
            elif bands is not None:
                out[merchant] = bands
        return out

    def add_lists(self, file: str, node: yaml.Node) -> None:
        if not isinstance(node, yaml.MappingNode):
            self.error(file, node, "lists maps list names to [values] or {file: path}")
            return
        for name, key_node, value in self.items(file, node, None):
            if not _LIST_NAME.match(name) or "__" in name:
                self.error(file, key_node, f"bad list name '{name}': use letters, digits and _")
                continue
            if name in self.list_at:
                first = "{}:{}".format(*self.list_at[name])
                self.error(file, key_node, f"list '{name}' is already defined at {first}")
                continue
            self.list_at[name] = (file, key_node.start_mark.line + 1)
            # Registered even when broken, so rules using it are not also reported as unknown.
            self.lists[name] = self.list_values(file, name, value)

    def list_values(self, file: str, name: str, node: yaml.Node) -> frozenset[str]:
        if isinstance(node, yaml.SequenceNode):
            values = set()
            for item in node.value:
                text = self.text(file, item, f"an entry of list '{name}'")
                if text is not None:
                    values.add(text)
            return frozenset(values)
        if isinstance(node, yaml.MappingNode):
            path: str | None = None
            for _, _, value in self.items(file, node, ("file",)):
                path = self.text(file, value, f"list '{name}' file")
            if path is None:
                self.error(file, node, f"list '{name}': give {{file: path}}")
                return frozenset()
            self.list_files[name] = path
            try:
                return parse_list_file(self.read_list(path))
            except FileNotFoundError:
                self.error(file, node, f"list '{name}': file not found: {path}")
            except UnicodeDecodeError:
                self.error(file, node, f"list '{name}': {path} is not UTF-8 text")
            except (OSError, ValueError) as e:
                self.error(file, node, f"list '{name}': cannot read {path}: {e}")
            return frozenset()
        self.error(file, node, f"list '{name}' must be [values] or {{file: path}} ([] when empty)")
        return frozenset()

    def add_rules(self, file: str, node: yaml.Node) -> None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(file, node, "rules is a list of rules (each item starts with '- id: ...')")
            return
        for item in node.value:
            if not isinstance(item, yaml.MappingNode):
                self.error(file, item, "a rule is a mapping with id, when and action")
                continue
            self.add_rule(file, item)

    def add_rule(self, file: str, node: yaml.MappingNode) -> None:
        id_node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "id"), None)
        rule_id = self.text(file, id_node, "id") if id_node is not None else None
        valid = rule_id is not None
        if id_node is None:
            self.error(file, node, "rule without an id")
        elif rule_id is not None and not _RULE_ID.match(rule_id):
            self.error(file, id_node, f"bad rule id {rule_id!r}: use letters, digits, _ . : -", rule_id)
            valid = False
        elif rule_id is not None and rule_id in self.rule_at:
            first = "{}:{}".format(*self.rule_at[rule_id])
            self.error(file, id_node, f"duplicate rule id '{rule_id}' (first defined at {first})", rule_id)
            valid = False
        raw = _RawRule(file, node.start_mark.line + 1, rule_id or "", valid=valid)
        for key, _, value in self.items(file, node, _RULE_KEYS, rule_id):
            if key == "when":
                if self.text(file, value, "when", rule_id) is not None:
                    raw.when = value  # type: ignore[assignment]
            elif key == "action":
                raw.action = self.choice(file, value, "action", ACTIONS, rule_id)  # type: ignore[assignment]
            elif key == "mode":
                raw.mode = self.choice(file, value, "mode", MODES, rule_id) or "live"  # type: ignore[assignment]
            elif key in ("reason", "description"):
                setattr(raw, key, self.text(file, value, key, rule_id))
            elif key == "merchants":
                raw.merchants = self.merchant_scope(file, value, rule_id)
        for key in ("when", "action"):
            if key not in {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}:
                self.error(file, node, f"rule without '{key}'", rule_id)
        if valid and rule_id is not None:
            self.rule_at[rule_id] = (file, raw.line)
        self.rules.append(raw)

    def choice(
        self, file: str, node: yaml.Node, key: str, allowed: Sequence[str], rule_id: str | None
    ) -> str | None:
        text = self.text(file, node, key, rule_id)
        if text is not None and text not in allowed:
            self.error(file, node, f"bad {key} '{text}': use {' | '.join(allowed)}", rule_id)
            return None
        return text

    def merchant_scope(self, file: str, node: yaml.Node, rule_id: str | None) -> frozenset[str] | None:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(file, node, "merchants must be a non-empty list of merchant ids", rule_id)
            return None
        ids = [self.text(file, item, "a merchant id", rule_id) for item in node.value]
        return frozenset(i for i in ids if i is not None)

    def compile_rules(self) -> list[Rule]:
        rules: list[Rule] = []
        # the declared metadata keys are names too (metadata.KEY), after every file is read
        names = {**self.names, **{METADATA_PREFIX + k: t for k, t in self.metadata.items()}}
        for raw in self.rules:
            if raw.when is None:
                continue  # already reported
            rule_id = raw.id or None
            try:
                expr = compile_expression(str(raw.when.value), names, self.lists, expected="bool")
            except ExpressionError as e:
                for problem in e.problems:
                    line, message = _expression_location(raw.when, e.text, problem.line, problem.column)
                    self.errors.append(
                        RuleError(raw.file, line, rule_id, f"when: {problem.message}{message}")
                    )
                continue
            if not raw.valid or raw.action is None:
                continue  # already reported
            rules.append(
                Rule(
                    raw.id,
                    expr,
                    raw.action,
                    raw.mode,
                    raw.reason,
                    raw.description,
                    raw.merchants,
                    raw.file,
                    raw.line,
                )
            )
        return rules


def _bands(challenge: float | None, review: float | None, block: float | None) -> ScoreBands | str | None:
    """The bands, a message when they are out of order, None when a threshold is missing (reported)."""
    if review is None or block is None:
        return None
    if review > block:
        return f"review ({review:g}) must not be above block ({block:g})"
    if challenge is not None and challenge > review:
        return f"challenge ({challenge:g}) must not be above review ({review:g})"
    return ScoreBands(review, block, challenge)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _expression_location(node: yaml.ScalarNode, text: str, line: int, column: int) -> tuple[int, str]:
    """The file line of a problem in a `when` expression, and a caret excerpt of the expression."""
    start = node.start_mark.line + 1
    if node.style in ("|", ">"):
        start += 1  # a block scalar's text begins on the line after the indicator
    if node.style == "|":
        start += line - 1  # literal blocks keep their lines; other styles fold them
    lines = text.splitlines() or [""]
    source = lines[line - 1] if line <= len(lines) else ""
    return start, f" (column {column})\n  {source}\n  {' ' * (column - 1)}^"
