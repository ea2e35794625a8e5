"""Rule sets: the loaded rules, and the verdict they decide for a payment or a whole backtest.

engine/rules/yaml_loader.py builds a :class:`RuleSet` from a directory of YAML files. docs/rules.md
describes the file format and, in one place, the verdict precedence implemented by
:meth:`RuleSet.decide` (one payment) and :meth:`RuleSet.decide_frame` (a backtest over columns).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, TypeAlias, get_args

import numpy as np
import pandas as pd

from antifraud.engine.rules.expression import Expression
from antifraud.engine.rules.nodes import NUMBER, FieldType
from antifraud.engine.rules.scalar import find_missing
from antifraud.engine.rules.vectorized import Column, evaluate_prepared, prepare_columns
from antifraud.engine.verdicts import SEVERITY, VERDICTS, Verdict, band

Action: TypeAlias = Verdict  # a rule's action is the verdict it asks for
Mode: TypeAlias = Literal["live", "shadow"]
ACTIONS: Final[tuple[Action, ...]] = get_args(Action)
MODES: Final[tuple[Mode, ...]] = get_args(Mode)

_VERSION_LENGTH: Final = 12


# --------------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True)
class ScoreBands:
    """Thresholds on the model score: >= block blocks, else >= review reviews, else allows."""

    review: float
    block: float

    def verdict(self, score: float | None) -> Verdict | None:
        """The band a score falls in; None when the score is missing (None or NaN).

        engine.verdicts.band is the same rule over arrays; this one is on the service's hot path.
        """
        if score is None or score != score:
            return None
        if score >= self.block:
            return "block"
        if score >= self.review:
            return "review"
        return "allow"


@dataclass(frozen=True)
class Rule:
    """One rule as loaded: its condition compiled, its origin kept for messages."""

    id: str
    when: Expression
    action: Action
    mode: Mode = "live"
    reason: str | None = None
    description: str | None = None
    merchants: frozenset[str] | None = None  # None: every merchant
    file: str = ""
    line: int | None = None


class FiredRule(NamedTuple):
    """A rule whose condition held: (rule id, action, reason)."""

    rule_id: str
    action: Action
    reason: str | None


@dataclass(frozen=True)
class RuleOutcome:
    """What the rule set decided for one payment."""

    verdict: Verdict | None  # None: score missing and no rule decided (the caller's fail policy)
    band_verdict: Verdict | None  # the score band alone; None when the score is missing
    fired: list[FiredRule] = field(default_factory=list)  # live rules, in rule set order
    shadow_fired: list[FiredRule] = field(default_factory=list)  # shadow rules: logged only
    skipped: list[str] = field(default_factory=list)  # rule ids not evaluated for missing inputs
    version: str = ""  # RuleSet.version, to record with the decision


class _Entry(NamedTuple):
    # what decide() needs per rule, unpacked in one go in the hot loop
    rule_id: str
    evaluate: Callable[[Mapping[str, Any]], Any]
    required: frozenset[str]
    kind: int  # 0 block, 1 allow, 2 review (live), 3 shadow
    fired: FiredRule


_KIND: Final[Mapping[str, int]] = {"block": 0, "allow": 1, "review": 2}
_VERDICT_BY_CODE: Final = np.array([*VERDICTS, None], dtype=object)  # code -1: None


class RuleSet:
    """A loaded, checked rule set. Build it with :func:`load_ruleset`."""

    def __init__(
        self,
        rules: Sequence[Rule],
        lists: Mapping[str, frozenset[str]],
        bands: ScoreBands,
        merchant_bands: Mapping[str, ScoreBands] | None = None,
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.lists: Mapping[str, frozenset[str]] = dict(lists)
        self.bands = bands
        self.merchant_bands: Mapping[str, ScoreBands] = dict(merchant_bands or {})
        self.version: str = self._version()
        #: every name read by some rule, with its type (the columns a backtest needs)
        self.name_types: dict[str, FieldType] = {}
        for rule in self.rules:
            self.name_types.update(rule.when.name_types)
        required = set().union(*(r.when.required_names for r in self.rules))
        self._numbers = tuple(sorted(n for n in required if self.name_types[n] == NUMBER))
        self._others = tuple(sorted(n for n in required if self.name_types[n] != NUMBER))
        entries = [self._entry(r) for r in self.rules]
        self._kinds = np.array([e.kind for e in entries], dtype=np.int8)
        self._global = tuple(e for r, e in zip(self.rules, entries, strict=True) if r.merchants is None)
        scoped = {m for r in self.rules for m in (r.merchants or ())}
        self._by_merchant = {
            m: tuple(
                e for r, e in zip(self.rules, entries, strict=True) if r.merchants is None or m in r.merchants
            )
            for m in scoped
        }

    @staticmethod
    def _entry(rule: Rule) -> _Entry:
        kind = 3 if rule.mode == "shadow" else _KIND[rule.action]
        return _Entry(
            rule.id,
            rule.when.evaluate_unchecked,
            rule.when.required_names,
            kind,
            FiredRule(rule.id, rule.action, rule.reason),
        )

    def _version(self) -> str:
        # The canonical content: what decides, not how the files are laid out. Comments,
        # whitespace, key order, list entry order and parentheses do not change the version.
        content = {
            "score_bands": {
                "review": self.bands.review,
                "block": self.bands.block,
                "merchants": {m: [b.review, b.block] for m, b in sorted(self.merchant_bands.items())},
            },
            "lists": {name: sorted(values) for name, values in sorted(self.lists.items())},
            "rules": [
                {
                    "id": r.id,
                    "when": r.when.canonical,
                    "action": r.action,
                    "mode": r.mode,
                    "reason": r.reason,
                    "description": r.description,
                    "merchants": sorted(r.merchants) if r.merchants is not None else None,
                }
                for r in self.rules
            ],
        }
        text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_VERSION_LENGTH]

    def bands_for(self, merchant_id: str | None) -> ScoreBands:
        """The score bands that apply to a merchant (its override, else the default)."""
        return self.merchant_bands.get(merchant_id, self.bands) if merchant_id is not None else self.bands

    def decide(
        self,
        score: float | None,
        env: Mapping[str, Any],
        merchant_id: str | None,
        *,
        no_score_verdict: Verdict | None = None,
    ) -> RuleOutcome:
        """Decide one payment from the model score and the rules (precedence: docs/rules.md).

        ``env`` maps names (payment fields and features) to values; a missing value is absent,
        None, NaN or pandas NA. ``no_score_verdict`` optionally stands in for the band verdict
        when the score is missing (the caller's fail policy), so that rules still take
        precedence over it; by default the verdict is then None unless a rule decides.
        """
        missing = find_missing(env, self._numbers, self._others)
        fired: list[FiredRule] = []
        shadow: list[FiredRule] = []
        skipped: list[str] = []
        block = allow = review = False
        rules = self._by_merchant.get(merchant_id, self._global) if merchant_id is not None else self._global
        for rule_id, evaluate, required, kind, fired_rule in rules:
            if missing is not None and not required.isdisjoint(missing):
                skipped.append(rule_id)
                continue
            result = evaluate(env)
            if result is None:
                skipped.append(rule_id)
            elif result:
                if kind == 3:
                    shadow.append(fired_rule)
                    continue
                fired.append(fired_rule)
                if kind == 0:
                    block = True
                elif kind == 1:
                    allow = True
                else:
                    review = True
        band = self.bands_for(merchant_id).verdict(score)
        verdict: Verdict | None
        if block:
            verdict = "block"
        elif allow:
            verdict = "allow"
        else:
            verdict = band if band is not None else no_score_verdict
            if review and (verdict is None or verdict == "allow"):
                verdict = "review"
        return RuleOutcome(verdict, band, fired, shadow, skipped, self.version)

    def decide_frame(
        self,
        scores: np.ndarray[Any, Any] | pd.Series[Any] | Sequence[float | None],
        columns: Mapping[str, Column] | pd.DataFrame,
        merchant_ids: np.ndarray[Any, Any] | pd.Series[Any] | Sequence[str | None],
        *,
        no_score_verdict: Verdict | None = None,
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """:meth:`decide` over n rows at once, for backtests.

        Returns (verdicts, fired, skipped): verdicts is an object array of "allow" / "review" /
        "block" / None; fired and skipped are n x len(self.rules) boolean matrices, columns in
        ``self.rules`` order. fired includes shadow rules (check ``rule.mode``); a rule scoped to
        other merchants is neither fired nor skipped on that row. NaN scores are missing.
        """
        score = np.asarray(pd.Series(scores, dtype="float64"), dtype=np.float64)
        n = len(score)
        merchants = pd.Series(np.asarray(merchant_ids, dtype=object), copy=False)
        if len(merchants) != n:
            raise ValueError(f"merchant_ids has {len(merchants)} rows, scores has {n}")
        prepared = prepare_columns(columns, self.name_types, n)
        fired = np.zeros((n, len(self.rules)), dtype=bool)
        skipped = np.zeros((n, len(self.rules)), dtype=bool)
        for j, rule in enumerate(self.rules):
            f, s = evaluate_prepared(rule.when, prepared, n)
            if rule.merchants is not None:
                scope = merchants.isin(list(rule.merchants)).to_numpy(dtype=bool)
                f, s = f & scope, s & scope
            fired[:, j] = f
            skipped[:, j] = s

        def any_fired(kind: int) -> np.ndarray[Any, Any]:
            return np.asarray(fired[:, self._kinds == kind].any(axis=1))

        review_t = np.full(n, self.bands.review)
        block_t = np.full(n, self.bands.block)
        if self.merchant_bands:
            review_t = merchants.map({m: b.review for m, b in self.merchant_bands.items()}).to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            block_t = merchants.map({m: b.block for m, b in self.merchant_bands.items()}).to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            review_t = np.where(np.isnan(review_t), self.bands.review, review_t)
            block_t = np.where(np.isnan(block_t), self.bands.block, block_t)
        code = band(score, review_t, block_t)
        no_score = np.isnan(score)
        code[no_score] = -1 if no_score_verdict is None else SEVERITY[no_score_verdict]
        code = np.where(any_fired(2), np.maximum(code, 1), code)
        code = np.where(any_fired(1), 0, code)
        code = np.where(any_fired(0), 2, code)
        return _VERDICT_BY_CODE[code], fired, skipped

    def __repr__(self) -> str:
        return f"RuleSet(version={self.version!r}, rules={len(self.rules)}, lists={len(self.lists)})"
