"""Rule sets: the loaded rules, and the verdict they decide for a payment or a whole backtest.

engine/rules/yaml_loader.py builds a :class:`RuleSet` from a directory of YAML files. docs/rules.md
describes the file format and, in one place, the verdict precedence implemented by
:meth:`RuleSet.decide` (one payment) and :meth:`RuleSet.decide_frame` (a backtest over columns).
"""

from __future__ import annotations

import hashlib
import json
import math
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
#: what the score bands' thresholds are written on: the model score (0-1) or the risk score (0-100)
Scale: TypeAlias = Literal["score", "risk_score"]
#: what an already authenticated payment gets instead of a challenge
Fallback: TypeAlias = Literal["allow", "review"]
#: the types a metadata key may be declared with (`metadata:` in a rules file)
MetadataType: TypeAlias = FieldType
ACTIONS: Final[tuple[Action, ...]] = get_args(Action)
MODES: Final[tuple[Mode, ...]] = get_args(Mode)
SCALES: Final[tuple[Scale, ...]] = get_args(Scale)
FALLBACKS: Final[tuple[Fallback, ...]] = get_args(Fallback)
METADATA_TYPES: Final[tuple[MetadataType, ...]] = get_args(MetadataType)
#: the default of `authenticated_fallback` (docs/rules.md argues it)
DEFAULT_FALLBACK: Final[Fallback] = "allow"
#: how a metadata key is named in rules: metadata.loyalty_tier
METADATA_PREFIX: Final = "metadata."

_VERSION_LENGTH: Final = 12


# --------------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True)
class ScoreBands:
    """Thresholds: >= block blocks, else >= review reviews, else >= challenge (when set)
    challenges, else allows. On the rule set's scale: the model score or the risk score."""

    review: float
    block: float
    challenge: float | None = None  # None: no challenge band

    def verdict(self, value: float | None) -> Verdict | None:
        """The band a value (on the bands' scale) falls in; None when it is missing (None or NaN).

        engine.verdicts.band is the same rule over arrays; this one is on the service's hot path.
        """
        if value is None or value != value:
            return None
        if value >= self.block:
            return "block"
        if value >= self.review:
            return "review"
        if self.challenge is not None and value >= self.challenge:
            return "challenge"
        return "allow"

    def threshold(self, verdict: Verdict) -> float | None:
        """The lower bound of a verdict's band (None for allow, or challenge without a band)."""
        if verdict == "block":
            return self.block
        if verdict == "review":
            return self.review
        return self.challenge if verdict == "challenge" else None


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
    #: the band's lower bound on the rule set's scale, when band_verdict is not allow (else None)
    band_threshold: float | None = None
    #: the verdict that replaced a challenge because the payment was already authenticated
    authenticated_fallback: Fallback | None = None


class _Entry(NamedTuple):
    # what decide() needs per rule, unpacked in one go in the hot loop
    rule_id: str
    evaluate: Callable[[Mapping[str, Any]], Any]
    required: frozenset[str]
    kind: int  # 0 block, 1 allow, 2 review, 4 challenge (live), 3 shadow
    fired: FiredRule


_KIND: Final[Mapping[str, int]] = {"block": 0, "allow": 1, "review": 2, "challenge": 4}
_VERDICT_BY_CODE: Final = np.array([*VERDICTS, None], dtype=object)  # code -1: None
_CHALLENGE: Final = SEVERITY["challenge"]
_REVIEW: Final = SEVERITY["review"]
_BLOCK: Final = SEVERITY["block"]


class RuleSet:
    """A loaded, checked rule set. Build it with :func:`load_ruleset`."""

    def __init__(
        self,
        rules: Sequence[Rule],
        lists: Mapping[str, frozenset[str]],
        bands: ScoreBands,
        merchant_bands: Mapping[str, ScoreBands] | None = None,
        *,
        scale: Scale = "score",
        authenticated_fallback: Fallback = DEFAULT_FALLBACK,
        metadata: Mapping[str, MetadataType] | None = None,
        files: Sequence[str] = (),
        list_files: Mapping[str, str] | None = None,
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.lists: Mapping[str, frozenset[str]] = dict(lists)
        #: the rule files it was read from, relative to its directory (the console shows and edits them);
        #: like `list_files`, where the content came from, never part of the version
        self.files: tuple[str, ...] = tuple(files)
        #: the lists read from a file ({file: path} in a rules file): list name -> path in the directory
        self.list_files: Mapping[str, str] = dict(list_files or {})
        self.bands = bands
        self.merchant_bands: Mapping[str, ScoreBands] = dict(merchant_bands or {})
        #: what the bands' thresholds are written on (decide reads the risk score or the score)
        self.scale: Scale = scale
        #: what an already authenticated payment gets instead of a challenge
        self.authenticated_fallback: Fallback = authenticated_fallback
        #: the metadata keys rules may read, with their declared types (key without the prefix)
        self.metadata: Mapping[str, MetadataType] = dict(metadata or {})
        self._metadata_items = tuple(
            (METADATA_PREFIX + k, _METADATA_CHECK[t]) for k, t in self.metadata.items()
        )
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
        bands: dict[str, Any] = {
            "review": self.bands.review,
            "block": self.bands.block,
            "merchants": {m: [b.review, b.block] for m, b in sorted(self.merchant_bands.items())},
        }
        # Keys added by later features enter only when used, so that an older rule set keeps its
        # version (recorded with every decision made under it).
        if self.bands.challenge is not None or any(
            b.challenge is not None for b in self.merchant_bands.values()
        ):
            bands["challenge"] = self.bands.challenge
            bands["merchant_challenge"] = {m: b.challenge for m, b in sorted(self.merchant_bands.items())}
        if self.scale != "score":
            bands["scale"] = self.scale
        content: dict[str, Any] = {
            "score_bands": bands,
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
        if self.authenticated_fallback != DEFAULT_FALLBACK:
            content["authenticated_fallback"] = self.authenticated_fallback
        if self.metadata:
            content["metadata"] = dict(sorted(self.metadata.items()))
        text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_VERSION_LENGTH]

    def bands_for(self, merchant_id: str | None) -> ScoreBands:
        """The score bands that apply to a merchant (its override, else the default)."""
        return self.merchant_bands.get(merchant_id, self.bands) if merchant_id is not None else self.bands

    def metadata_env(self, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        """The payment's metadata as rules read it: {"metadata.KEY": value} for each declared key
        the payment has with its declared type. A key absent, or sent with another type, is left
        out: rules reading it are skipped, as for any missing value (docs/rules.md)."""
        if not metadata or not self._metadata_items:
            return {}
        out: dict[str, Any] = {}
        for name, check in self._metadata_items:
            value = metadata.get(name[len(METADATA_PREFIX) :])
            if value is not None and check(value):
                out[name] = value
        return out

    def decide(
        self,
        score: float | None,
        env: Mapping[str, Any],
        merchant_id: str | None,
        *,
        no_score_verdict: Verdict | None = None,
        risk_score: float | None = None,
    ) -> RuleOutcome:
        """Decide one payment from the model score and the rules (precedence: docs/rules.md).

        ``env`` maps names (payment fields, features, ``metadata.KEY``) to values; a missing value
        is absent, None, NaN or pandas NA; ``env["authenticated"] is True`` turns a challenge into
        the rule set's ``authenticated_fallback``. ``risk_score`` is the payment's risk score,
        which the bands read instead of ``score`` when the rule set's scale is ``risk_score``
        (missing there: no band, as for a missing score). ``no_score_verdict`` optionally stands
        in for the band verdict when that value is missing (the caller's fail policy), so that
        rules still take precedence over it; by default the verdict is then None unless a rule
        decides.
        """
        missing = find_missing(env, self._numbers, self._others)
        fired: list[FiredRule] = []
        shadow: list[FiredRule] = []
        skipped: list[str] = []
        block = allow = review = challenge = False
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
                elif kind == 2:
                    review = True
                else:
                    challenge = True
        bands = self.bands_for(merchant_id)
        band = bands.verdict(risk_score if self.scale == "risk_score" else score)
        verdict: Verdict | None
        if block:
            verdict = "block"
        elif allow:
            verdict = "allow"
        else:
            # the most severe of the band (or the fail policy), review rules and challenge rules
            verdict = band if band is not None else no_score_verdict
            if review and (verdict is None or verdict == "allow" or verdict == "challenge"):
                verdict = "review"
            elif challenge and (verdict is None or verdict == "allow"):
                verdict = "challenge"
        fallback: Fallback | None = None
        if verdict == "challenge" and env.get("authenticated") is True:
            fallback = verdict = self.authenticated_fallback  # never a second factor twice
        threshold = bands.threshold(band) if band is not None else None
        return RuleOutcome(verdict, band, fired, shadow, skipped, self.version, threshold, fallback)

    def decide_frame(
        self,
        scores: np.ndarray[Any, Any] | pd.Series[Any] | Sequence[float | None],
        columns: Mapping[str, Column] | pd.DataFrame,
        merchant_ids: np.ndarray[Any, Any] | pd.Series[Any] | Sequence[str | None],
        *,
        no_score_verdict: Verdict | None = None,
        risk_scores: np.ndarray[Any, Any] | pd.Series[Any] | Sequence[float | None] | None = None,
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """:meth:`decide` over n rows at once, for backtests.

        Returns (verdicts, fired, skipped): verdicts is an object array of "allow" / "challenge" /
        "review" / "block" / None; fired and skipped are n x len(self.rules) boolean matrices,
        columns in ``self.rules`` order. fired includes shadow rules (check ``rule.mode``); a rule
        scoped to other merchants is neither fired nor skipped on that row. NaN scores are
        missing. ``risk_scores`` (``engine.verdicts.RiskScale.of_array`` of the scores) is
        required when the bands are on the risk-score scale and some score is present. Metadata
        is read from ``metadata.KEY`` columns (absent: missing on every row), ``authenticated``
        from its column.
        """
        score = np.asarray(pd.Series(scores, dtype="float64"), dtype=np.float64)
        n = len(score)
        if self.scale == "risk_score":
            if risk_scores is None:
                if not np.isnan(score).all():
                    raise ValueError(
                        "this rule set's score_bands are on the risk_score scale: pass risk_scores "
                        "(the model's RiskScale.of_array(scores))"
                    )
                risk_scores = score
            value = np.asarray(pd.Series(risk_scores, dtype="float64"), dtype=np.float64)
            if len(value) != n:
                raise ValueError(f"risk_scores has {len(value)} rows, scores has {n}")
        else:
            value = score
        merchants = pd.Series(np.asarray(merchant_ids, dtype=object), copy=False)
        if len(merchants) != n:
            raise ValueError(f"merchant_ids has {len(merchants)} rows, scores has {n}")
        prepared = prepare_columns(self._typed_metadata(columns, n), self.name_types, n)
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

        def thresholds(key: str) -> np.ndarray[Any, Any]:
            # per row: the merchant's own threshold, else the default; NaN: no such band
            default = getattr(self.bands, key)
            default = np.nan if default is None else float(default)
            if not self.merchant_bands:
                return np.full(n, default)
            by_merchant = {m: getattr(b, key) for m, b in self.merchant_bands.items()}
            out = merchants.map({m: (np.nan if t is None else t) for m, t in by_merchant.items()}).to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            return np.where(merchants.isin(list(by_merchant)).to_numpy(dtype=bool), out, default)

        has_challenge = self.bands.challenge is not None or any(
            b.challenge is not None for b in self.merchant_bands.values()
        )
        challenge_t = thresholds("challenge") if has_challenge else None
        code = band(value, thresholds("review"), thresholds("block"), challenge_t)
        no_score = np.isnan(value)
        code[no_score] = -1 if no_score_verdict is None else SEVERITY[no_score_verdict]
        code = np.where(any_fired(2), np.maximum(code, _REVIEW), code)
        code = np.where(any_fired(4) & (code < _CHALLENGE), _CHALLENGE, code)  # -1 (none) too
        code = np.where(any_fired(1), 0, code)
        code = np.where(any_fired(0), _BLOCK, code)
        challenged = code == _CHALLENGE
        if challenged.any():  # an authenticated payment is never challenged twice
            authenticated = _true(columns.get("authenticated"), n)
            code = np.where(challenged & authenticated, SEVERITY[self.authenticated_fallback], code)
        return _VERDICT_BY_CODE[code], fired, skipped

    def _typed_metadata(
        self, columns: Mapping[str, Column] | pd.DataFrame, n: int
    ) -> Mapping[str, Column] | pd.DataFrame:
        """The columns, with each metadata value of another type than declared made missing, as
        :meth:`metadata_env` leaves it out online (a history's metadata is not validated)."""
        fixed: dict[str, Column] = {}
        for name, check in self._metadata_items:
            if name not in self.name_types or name not in columns:
                continue
            column = columns[name]
            kind = getattr(getattr(column, "dtype", None), "kind", "O")  # extension dtypes: checked
            declared = self.metadata[name[len(METADATA_PREFIX) :]]
            if (declared == "number" and kind in "iuf") or (declared == "bool" and kind == "b"):
                continue  # a plain numpy column of the declared type: nothing to check
            values = np.asarray(column, dtype=object)
            fixed[name] = np.array([v if v is not None and check(v) else None for v in values], dtype=object)
        if not fixed:
            return columns
        return {**{str(k): columns[str(k)] for k in columns}, **fixed}

    def __repr__(self) -> str:
        return f"RuleSet(version={self.version!r}, rules={len(self.rules)}, lists={len(self.lists)})"


def _is_number(value: Any) -> bool:
    # a bool is an int to Python, not a number to rules; numpy scalars come from history columns
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool | np.bool_)
        and math.isfinite(value)
    )


#: a metadata value's runtime check per declared type: a value of another type is missing
_METADATA_CHECK: Final[Mapping[MetadataType, Callable[[Any], bool]]] = {
    "string": lambda v: isinstance(v, str),
    "number": _is_number,
    "bool": lambda v: isinstance(v, bool | np.bool_),
}


def _true(column: Any, n: int) -> np.ndarray[Any, Any]:
    """Where a true/false column is true (missing and absent: false), as n booleans."""
    if column is None:
        return np.zeros(n, dtype=bool)
    values = pd.Series(np.asarray(column, dtype=object), copy=False)
    return np.asarray(values.map(lambda v: v is True or v is np.True_).to_numpy(dtype=bool))
