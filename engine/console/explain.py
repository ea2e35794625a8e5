"""A decision's reasons in plain words, for the console's pages.

A fired rule shows its `description` from the live rule set, with its action and reason code (a rule
no longer in the live set says so); the score band says where the risk score fell ("risk score 63 is
in the review band (58 and above)"); the fail policy names what was missing; a model contribution
names its feature in words (features/labels.py): "card: payments in the last hour = 7 raised the risk
(+1.42)".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from antifraud.engine.rules import RuleSet


@dataclass(frozen=True)
class Line:
    """One reason: what kind (rule, shadow, band, policy, model, note) and its words."""

    kind: str
    text: str


def _number(value: float | None) -> str:
    if value is None:
        return "missing"
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def rule_line(fired: Mapping[str, Any], rules: RuleSet, shadow: bool = False) -> Line:
    """A fired rule: its description from the live set, its action and reason code."""
    live = {r.id: r for r in rules.rules}
    rule_id, action, code = fired["rule"], fired["action"], fired.get("reason")
    rule = live.get(rule_id)
    described = (rule.description or rule_id) if rule is not None else rule_id
    tail = f"{action}" + (f", {code}" if code else "")
    if rule is None:
        tail += f"; not in the live rule set (version {rules.version})"
    if shadow:
        return Line("shadow", f"shadow rule {described} would {action} ({tail}); logged only")
    return Line("rule", f"{described} ({tail})")


def band_line(band: Mapping[str, Any]) -> Line:
    """Where the score fell: "risk score 63 is in the review band (58 and above)"."""
    if band.get("scale") == "risk_score":
        value, threshold = f"risk score {band['risk_score']}", f"{band['threshold']:g}"
    else:
        value, threshold = f"score {band['score']:.3f}", f"{band['threshold']:g}"
    return Line("band", f"{value} is in the {band['band']} band ({threshold} and above)")


def reason_lines(reasons: Mapping[str, Any], rules: RuleSet, degraded: Sequence[str] = ()) -> list[Line]:
    """The rules, band, fail policy and fallback of a decision (or a review case) in words; a case
    of a failed challenge says so first."""
    lines = []
    if reasons.get("challenge") == "failed":
        lines.append(Line("challenge", "the payer failed the challenge (reported by the payment flow)"))
    lines += [rule_line(f, rules) for f in reasons.get("rules", ())]
    if (band := reasons.get("band")) is not None:
        lines.append(band_line(band))
    if (policy := reasons.get("fail_policy")) is not None:
        missing = "; ".join(degraded) or "a signal was missing"
        lines.append(Line("policy", f"{missing}: the fail policy answered {policy}"))
    if (fallback := reasons.get("authenticated_fallback")) is not None:
        lines.append(Line("policy", f"already authenticated: the challenge became {fallback}"))
    lines += [rule_line(f, rules, shadow=True) for f in reasons.get("shadow_rules", ())]
    return lines


def skipped_lines(reasons: Mapping[str, Any]) -> list[Line]:
    """The rules skipped because an input they read was missing: often many (a rule set's every rule
    on a signal the payment lacks), so pages show them apart, collapsed."""
    return [
        Line("note", f"rule {rule_id} was not evaluated: an input it reads was missing")
        for rule_id in reasons.get("skipped_rules", ())
    ]


def reason_codes(reasons: Mapping[str, Any]) -> list[str]:
    """The reasons as short stable words, for a one-line summary where the full text does not fit (the
    demo's table): each fired rule's reason code (its id when it has none), then the band ("score
    band ≥58"), "fail policy", "authenticated" (a challenge replaced), and "challenge failed" first
    when it did."""
    codes = ["challenge failed"] if reasons.get("challenge") == "failed" else []
    codes += [str(f.get("reason") or f["rule"]) for f in reasons.get("rules", ())]
    if (band := reasons.get("band")) is not None:
        codes.append(f"score band ≥{band['threshold']:g}")
    for key, word in (("fail_policy", "fail policy"), ("authenticated_fallback", "authenticated")):
        if reasons.get(key) is not None:
            codes.append(word)
    return codes


def contribution_lines(reasons: Mapping[str, Any], labels: Mapping[str, str]) -> list[Line]:
    """The model's top contributions in words, or why there are none."""
    lines = []
    for c in reasons.get("model", ()):
        name = labels.get(c["feature"], c["feature"])
        direction = "raised" if c["contribution"] > 0 else "lowered"
        lines.append(
            Line("model", f"{name} = {_number(c['value'])} {direction} the risk ({c['contribution']:+.2f})")
        )
    if not lines and (note := reasons.get("model_note")):
        lines.append(Line("note", str(note)))
    return lines


def feature_rows(
    features: Mapping[str, float | None], labels: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """Each feature as (human name, its name, its value in words), in the decision's order."""
    return [(labels.get(name, name), name, _number(value)) for name, value in features.items()]


def age_words(age: timedelta) -> str:
    """How long something has waited, to the minute: "2 d 3 h", "3 h 12 min", "5 min"."""
    minutes = max(0, int(age.total_seconds() // 60))
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
