"""Rule sets: loading, errors with file/line/rule id, versioning, verdict precedence, merchant scope,
shadow mode, lists from files, the check command, and decide_frame == decide (property test)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from antifraud.engine.rules import (
    FieldType,
    FiredRule,
    RuleError,
    RuleSet,
    RuleSetError,
    check_rules,
    load_ruleset,
    print_report,
    ruleset_from_texts,
    run_check,
    transaction_field_types,
)
from antifraud.engine.verdicts import IDENTITY

FIXTURE = Path(__file__).parent / "data" / "rules"
FEATURES = ("card_count_10m", "card_count_1h", "card_mean_30d", "card_std_30d", "card_new_device")
NAMES: dict[str, FieldType] = {**transaction_field_types(), **dict.fromkeys(FEATURES, "number")}

PAYMENT: dict[str, Any] = {
    "card_id": "card_1",
    "merchant_id": "m_00001",
    "amount": 50.0,
    "ip": "192.0.2.1",
    "card_bin": "499999",
    "card_country": "FR",
    "ip_country": "FR",
    "authenticated": True,
    "card_count_10m": 0,
    "card_count_1h": 1,
    "card_mean_30d": 40.0,
    "card_std_30d": 20.0,
    "card_new_device": 0,
}


@pytest.fixture(scope="module")
def fixture_rules() -> RuleSet:
    return load_ruleset(FIXTURE, NAMES)


def errors_of(files: dict[str, str], lists: dict[str, str] | None = None) -> list[RuleError]:
    with pytest.raises(RuleSetError) as info:
        ruleset_from_texts(files, NAMES, lists)
    return info.value.errors


BANDS = "score_bands: {review: 0.35, block: 0.8}\n"


# ---------------------------------------------------------------------------------------------
# Loading the fixture


def test_fixture_loads(fixture_rules: RuleSet) -> None:
    rules = {r.id: r for r in fixture_rules.rules}
    assert list(rules)[:2] == ["blocked_ip", "card_testing_burst"]  # files by name, rules in order
    assert len(rules) == 8
    assert rules["blocked_ip"].reason == "BLOCKED_IP"
    assert rules["blocked_ip"].file == "default.yaml" and rules["blocked_ip"].line == 15
    assert rules["new_device_high_amount"].mode == "shadow"
    assert rules["merchant_7_velocity"].merchants == {"m_00007"}
    assert rules["trusted_card"].merchants is None
    assert fixture_rules.bands.review == 0.35 and fixture_rules.bands.block == 0.8
    # a merchant override of one threshold inherits the other
    assert fixture_rules.bands_for("m_00042").review == 0.5
    assert fixture_rules.bands_for("m_00099").review == 0.35
    assert fixture_rules.bands_for("m_00099").block == 0.6
    assert fixture_rules.bands_for("unknown") == fixture_rules.bands


def test_lists_from_yaml_and_files(fixture_rules: RuleSet) -> None:
    assert fixture_rules.lists["blocked_ips"] == {"203.0.113.7", "198.51.100.23"}
    # comments, trailing comments and blank lines ignored; leading zeros kept (entries are text)
    assert fixture_rules.lists["risky_bins"] == {"411111", "522222", "0412"}
    assert fixture_rules.lists["trusted_cards"] == {"card_trusted_1", "card_trusted_2"}


def test_list_entries_are_text_as_written() -> None:
    ruleset = ruleset_from_texts(
        {"a.yaml": BANDS + "lists:\n  bins: [0412, 411111, 1e3, true, '0x1']\n"}, NAMES
    )
    assert ruleset.lists["bins"] == {"0412", "411111", "1e3", "true", "0x1"}


def test_a_multi_line_when(fixture_rules: RuleSet) -> None:
    rule = next(r for r in fixture_rules.rules if r.id == "merchant_7_velocity")
    assert rule.when.evaluate({"card_count_1h": 3, "amount": 10.0}) is True


# ---------------------------------------------------------------------------------------------
# Verdict precedence, case by case (docs/rules.md, "Verdict precedence")

FLAG_NAMES: dict[str, FieldType] = {
    "blk": "bool",
    "alw": "bool",
    "rev": "bool",
    "shadow_blk": "bool",
    "scoped_blk": "bool",
    "x": "number",
}
FLAG_RULES = """
score_bands:
  review: 0.35
  block: 0.80
  merchants:
    m_big: {review: 0.5, block: 0.9}
rules:
  - {id: r_block, when: blk, action: block, reason: B}
  - {id: r_allow, when: alw, action: allow}
  - {id: r_review, when: rev, action: review, reason: R}
  - {id: r_shadow, when: shadow_blk, action: block, mode: shadow}
  - {id: r_scoped, when: scoped_blk, action: block, merchants: [m_scoped]}
  - {id: r_missing, when: x > 1, action: block}
"""


@pytest.fixture(scope="module")
def flags() -> RuleSet:
    return ruleset_from_texts({"rules.yaml": FLAG_RULES}, FLAG_NAMES)


def flag_env(*on: str, x: Any = 0.0) -> dict[str, Any]:
    env: dict[str, Any] = {name: name in on for name in FLAG_NAMES if name != "x"}
    env["x"] = x
    return env


@pytest.mark.parametrize(
    ("score", "on", "merchant", "verdict", "band"),
    [
        # the score band alone; thresholds are inclusive
        (0.10, (), "m", "allow", "allow"),
        (0.35, (), "m", "review", "review"),
        (0.79, (), "m", "review", "review"),
        (0.80, (), "m", "block", "block"),
        (None, (), "m", None, None),
        (float("nan"), (), "m", None, None),
        # (1) a block rule wins over everything
        (0.10, ("blk",), "m", "block", "allow"),
        (0.10, ("blk", "alw"), "m", "block", "allow"),
        (0.10, ("blk", "alw", "rev"), "m", "block", "allow"),
        (None, ("blk",), "m", "block", None),
        # (2) an allow rule wins over the model and review rules, never over block rules
        (0.95, ("alw",), "m", "allow", "block"),
        (0.50, ("alw", "rev"), "m", "allow", "review"),
        (None, ("alw",), "m", "allow", None),
        # (3) else the more severe of the band and the review rules
        (0.10, ("rev",), "m", "review", "allow"),
        (0.50, ("rev",), "m", "review", "review"),
        (0.95, ("rev",), "m", "block", "block"),
        (None, ("rev",), "m", "review", None),
        # shadow rules never change the verdict
        (0.10, ("shadow_blk",), "m", "allow", "allow"),
        # rules scoped to other merchants are not evaluated
        (0.10, ("scoped_blk",), "m", "allow", "allow"),
        (0.10, ("scoped_blk",), "m_scoped", "block", "allow"),
        # per-merchant score bands
        (0.45, (), "m_big", "allow", "allow"),
        (0.85, (), "m_big", "review", "review"),
        (0.90, (), "m_big", "block", "block"),
    ],
)
def test_precedence(
    flags: RuleSet,
    score: float | None,
    on: tuple[str, ...],
    merchant: str,
    verdict: str | None,
    band: str | None,
) -> None:
    outcome = flags.decide(score, flag_env(*on), merchant)
    assert outcome.verdict == verdict
    assert outcome.band_verdict == band
    assert outcome.version == flags.version


def test_outcome_lists(flags: RuleSet) -> None:
    outcome = flags.decide(0.1, flag_env("blk", "rev", "shadow_blk", "scoped_blk", x=None), "m")
    assert outcome.fired == [FiredRule("r_block", "block", "B"), FiredRule("r_review", "review", "R")]
    assert outcome.shadow_fired == [FiredRule("r_shadow", "block", None)]
    assert outcome.skipped == ["r_missing"]  # x is missing; r_scoped is not evaluated at all
    assert flags.decide(0.1, flag_env(x=5.0), "m").verdict == "block"


def test_missing_input_skips_a_block_rule(flags: RuleSet) -> None:
    for missing in (None, float("nan")):
        outcome = flags.decide(0.1, flag_env(x=missing), "m")
        assert outcome.verdict == "allow" and outcome.skipped == ["r_missing"]
    outcome = flags.decide(0.1, {}, "m")  # nothing known: every rule skipped
    assert outcome.verdict == "allow"
    assert outcome.skipped == ["r_block", "r_allow", "r_review", "r_shadow", "r_missing"]


@pytest.mark.parametrize(
    ("on", "fail", "verdict"),
    [
        ((), "block", "block"),
        ((), "allow", "allow"),
        (("alw",), "block", "allow"),
        (("rev",), "allow", "review"),
        (("rev",), "block", "block"),
        (("blk",), "allow", "block"),
    ],
)
def test_no_score_verdict_stands_in_for_the_band(
    flags: RuleSet, on: tuple[str, ...], fail: Any, verdict: str
) -> None:
    outcome = flags.decide(None, flag_env(*on), "m", no_score_verdict=fail)
    assert outcome.verdict == verdict
    assert outcome.band_verdict is None


def test_fixture_decisions(fixture_rules: RuleSet) -> None:
    assert fixture_rules.decide(0.1, PAYMENT, "m_00001").verdict == "allow"
    blocked = fixture_rules.decide(0.1, {**PAYMENT, "ip": "203.0.113.7"}, "m_00001")
    assert blocked.verdict == "block" and blocked.fired[0] == FiredRule("blocked_ip", "block", "BLOCKED_IP")
    trusted = fixture_rules.decide(0.99, {**PAYMENT, "card_id": "card_trusted_1"}, "m_00001")
    assert trusted.verdict == "allow" and trusted.band_verdict == "block"
    bin_review = fixture_rules.decide(0.1, {**PAYMENT, "card_bin": "0412", "authenticated": False}, "m_00001")
    assert bin_review.verdict == "review"
    new_device = {**PAYMENT, "card_mean_30d": None, "card_new_device": 1, "amount": 150.0}
    no_history = fixture_rules.decide(0.1, new_device, "m_00001")
    assert no_history.skipped == ["amount_outlier"]
    assert no_history.shadow_fired == [FiredRule("new_device_high_amount", "block", "NEW_DEVICE")]
    assert no_history.verdict == "allow"
    burst = {**PAYMENT, "card_count_1h": 3, "amount": 10.0}
    assert fixture_rules.decide(0.1, burst, "m_00007").verdict == "review"
    assert fixture_rules.decide(0.1, burst, "m_00001").verdict == "allow"


# ---------------------------------------------------------------------------------------------
# Errors: collected across files, each with file, line and rule id


def test_errors_carry_file_line_and_rule_id() -> None:
    files = {
        "a.yaml": BANDS
        + """rules:
  - id: r1
    when: amout > 5
    action: block
  - id: r2
    when: amount > 5
    action: deny
    mode: dry
    colour: red
""",
        "b.yaml": """rules:
  - id: r1
    when: amount > 1
    action: review
""",
    }
    errors = errors_of(files)
    found = {(e.file, e.line, e.rule_id, e.message.splitlines()[0]) for e in errors}
    assert ("a.yaml", 4, "r1", "when: unknown name 'amout' (did you mean 'amount'?) (column 1)") in found
    assert ("a.yaml", 8, "r2", "bad action 'deny': use allow | challenge | review | block") in found
    assert ("a.yaml", 9, "r2", "bad mode 'dry': use live | shadow") in found
    assert any(e[:3] == ("a.yaml", 10, "r2") and "unknown key 'colour'" in e[3] for e in found)
    assert ("b.yaml", 2, "r1", "duplicate rule id 'r1' (first defined at a.yaml:3)") in found
    assert len(errors) == 5


@pytest.mark.parametrize(
    ("files", "lists", "expected"),
    [
        (
            {"a.yaml": "score_bands: {review: 0.5, block: 1.5}"},
            None,
            (1, "block must be a number between 0 and 1"),
        ),
        (
            {"a.yaml": "score_bands: {review: -0.1, block: 0.5}"},
            None,
            (1, "review must be a number between 0"),
        ),
        (
            {"a.yaml": "score_bands: {review: .nan, block: 0.5}"},
            None,
            (1, "review must be a number between 0"),
        ),
        ({"a.yaml": "score_bands: {review: yes, block: 0.5}"}, None, (1, "review must be a number")),
        (
            {"a.yaml": "score_bands: {review: 0.9, block: 0.5}"},
            None,
            (1, "review (0.9) must not be above block"),
        ),
        ({"a.yaml": "score_bands: {review: 0.5}"}, None, (1, "score_bands.block is required")),
        (
            {"a.yaml": "score_bands:\n  review: 0.3\n  block: 0.8\n  merchants:\n    m1: {review: 0.9}\n"},
            None,
            (5, "merchant m1: review (0.9) must not be above block (0.8)"),
        ),
        (
            {"a.yaml": "score_bands: {review: 0.1, block: 0.5, revew: 0.2}"},
            None,
            (1, "did you mean 'review'"),
        ),
        ({"a.yaml": BANDS + "rulez: []"}, None, (2, "unknown key 'rulez' (did you mean 'rules'?)")),
        (
            {"a.yaml": BANDS + "lists:\n  l: {file: nope.txt}"},
            None,
            (3, "list 'l': file not found: nope.txt"),
        ),
        ({"a.yaml": BANDS + "lists:\n  l:"}, None, (3, "must be [values] or {file: path}")),
        ({"a.yaml": BANDS + "lists:\n  l: [[1]]"}, None, (3, "an entry of list 'l' must be a single value")),
        ({"a.yaml": BANDS + "lists:\n  bad-name: []"}, None, (3, "bad list name 'bad-name'")),
        (
            {"a.yaml": BANDS + "lists:\n  l: []", "b.yaml": "lists:\n  l: []"},
            None,
            (2, "list 'l' is already defined at a.yaml:3"),
        ),
        (
            {"a.yaml": BANDS + "rules:\n  - {id: r, when: ip in lists.nope, action: block}"},
            None,
            (3, "unknown list 'nope'"),
        ),
        (
            {"a.yaml": BANDS + "rules:\n  - {id: r, when: amount, action: block}"},
            None,
            (3, "must be a condition"),
        ),
        ({"a.yaml": BANDS + "rules:\n  - {id: r, action: block}"}, None, (3, "rule without 'when'")),
        ({"a.yaml": BANDS + "rules:\n  - {when: 'true', action: block}"}, None, (3, "rule without an id")),
        (
            {"a.yaml": BANDS + "rules:\n  - {id: 'a b', when: 'true', action: block}"},
            None,
            (3, "bad rule id"),
        ),
        (
            {"a.yaml": BANDS + "rules:\n  - {id: r, when: 'true', action: block, merchants: []}"},
            None,
            (3, "merchants must be a non-empty list"),
        ),
        ({"a.yaml": BANDS + "rules: {id: r}"}, None, (2, "rules is a list of rules")),
        ({"a.yaml": BANDS + "rules:\n  - just text"}, None, (3, "a rule is a mapping")),
        (
            {"a.yaml": BANDS + "score_bands: {review: 0.1, block: 0.2}"},
            None,
            (2, "duplicate key 'score_bands'"),
        ),
        (
            {"a.yaml": BANDS, "b.yaml": BANDS},
            None,
            (1, "score_bands is already defined at a.yaml:1"),
        ),
        ({"a.yaml": "rules: []"}, None, (None, "score_bands is not defined")),
        ({"a.yaml": "rules:\nlists:"}, None, (None, "score_bands is not defined")),
        ({"a.yaml": BANDS + "rules: [\n"}, None, (3, "YAML syntax error")),
        ({"a.yaml": "- a\n- b"}, None, (1, "a rules file is a mapping")),
        ({"a.yaml": BANDS + "x: !!python/object:os.system {}"}, None, (2, "unsupported YAML tag")),
        (
            {"a.yaml": "---\n" + BANDS + "---\n" + BANDS},
            None,
            (3, "YAML syntax error: but found another document"),
        ),
    ],
)
def test_error_cases(
    files: dict[str, str], lists: dict[str, str] | None, expected: tuple[int | None, str]
) -> None:
    errors = errors_of(files, lists)
    line, fragment = expected
    assert any(e.line == line and fragment in e.message for e in errors), [str(e) for e in errors]


def test_expression_errors_in_block_scalars_point_at_their_line() -> None:
    text = (
        BANDS + "rules:\n  - id: r\n    when: |\n      amount > 5\n      and amout > 1\n    action: block\n"
    )
    (error,) = errors_of({"a.yaml": text})
    assert error.line == 6 and error.rule_id == "r"
    assert error.message.splitlines()[1:] == ["  and amout > 1", "      ^"]


def test_every_expression_problem_is_reported() -> None:
    text = BANDS + "rules:\n  - {id: r, when: amout > 1 and ip_countri == 'FR', action: block}"
    assert len(errors_of({"a.yaml": text})) == 2


def test_directory_errors(tmp_path: Path) -> None:
    assert check_rules(tmp_path / "nope", NAMES)[0].message == "not a directory"
    assert check_rules(tmp_path, NAMES)[0].message == "no *.yaml files"
    (tmp_path / "rules.yml").write_text(BANDS)
    assert "rename to rules.yaml" in check_rules(tmp_path, NAMES)[0].message


def test_list_files_must_stay_inside_the_directory(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("x\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text(BANDS + "lists:\n  l: {file: ../secret.txt}\n")
    (error,) = check_rules(rules, NAMES)
    assert "inside the rules directory" in error.message


def test_empty_files_and_hidden_files_are_fine(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BANDS)
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    (tmp_path / ".#a.yaml").write_text("{{ editor lock file")
    assert check_rules(tmp_path, NAMES) == []


# ---------------------------------------------------------------------------------------------
# Version


def copy_fixture(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(FIXTURE, target)
    return target


def version_after(tmp_path: Path, path: str, old: str, new: str) -> str:
    rules = copy_fixture(tmp_path)
    target = rules / path
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    return load_ruleset(rules, NAMES).version


def test_version_is_stable(fixture_rules: RuleSet, tmp_path: Path) -> None:
    assert len(fixture_rules.version) == 12
    assert load_ruleset(FIXTURE, NAMES).version == fixture_rules.version
    assert load_ruleset(copy_fixture(tmp_path), NAMES).version == fixture_rules.version


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [
        ("default.yaml", "# The fixture", "# A different comment\n# The fixture"),
        (
            "default.yaml",
            "when: card_count_10m >= 5 and amount < 5",
            "when: (card_count_10m>=5) and (amount<5)",
        ),
        ("default.yaml", "  review: 0.35\n  block: 0.80", "  block: 0.8\n  review: 0.350"),
        ("default.yaml", "[203.0.113.7, 198.51.100.23]", "[198.51.100.23, 203.0.113.7, 203.0.113.7]"),
        ("lists/risky_bins.txt", "411111\n", "411111   # same entry, new comment\n"),
    ],
)
def test_version_ignores_form(fixture_rules: RuleSet, tmp_path: Path, path: str, old: str, new: str) -> None:
    assert version_after(tmp_path, path, old, new) == fixture_rules.version


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [
        ("default.yaml", "card_count_10m >= 5", "card_count_10m >= 6"),
        (
            "default.yaml",
            "    action: block\n    reason: CARD_TESTING",
            "    action: review\n    reason: CARD_TESTING",
        ),
        ("default.yaml", "reason: CARD_TESTING", "reason: CARD_TESTING_2"),
        ("default.yaml", "review: 0.35", "review: 0.36"),
        ("default.yaml", "m_00042: {review: 0.5", "m_00042: {review: 0.55"),
        ("default.yaml", "203.0.113.7,", "203.0.113.8,"),
        ("lists/risky_bins.txt", "411111\n", "411112\n"),
        ("shadow.yaml", "mode: shadow", "mode: live"),
        ("shadow.yaml", "merchants: [m_00007]", "merchants: [m_00007, m_00008]"),
        ("default.yaml", "Many payments on one card", "Many payments on a card"),
    ],
)
def test_version_changes_with_content(
    fixture_rules: RuleSet, tmp_path: Path, path: str, old: str, new: str
) -> None:
    assert version_after(tmp_path, path, old, new) != fixture_rules.version


# ---------------------------------------------------------------------------------------------
# The check command


def test_check_ok(fixture_rules: RuleSet) -> None:
    out = io.StringIO()
    assert run_check(FIXTURE, NAMES, Console(file=out, width=200)) == 0
    assert out.getvalue().strip().splitlines() == [
        f"OK: 8 rules (1 shadow), 3 lists, version {fixture_rules.version}",
        "score bands on the score scale: review >= 0.35, block >= 0.8 (2 merchant overrides); an "
        "authenticated payment due a challenge gets allow",
    ]


def test_check_report_lists_every_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        BANDS + "rules:\n  - {id: r, when: \"ip_country in ['RU', 1]\", action: blok}\n"
    )
    errors = check_rules(tmp_path, NAMES)
    assert len(errors) == 2
    buffer = io.StringIO()
    print_report(errors, Console(file=buffer, width=200))
    out = buffer.getvalue()
    assert "2 error(s)" in out and "a.yaml:3" in out
    assert "['RU', 1]" in out  # printed as text, not eaten as rich markup
    assert "bad action 'blok'" in out
    assert run_check(tmp_path, NAMES, Console(file=io.StringIO())) == 1


# ---------------------------------------------------------------------------------------------
# decide_frame: the same decisions over columns


def test_decide_frame_on_the_fixture(fixture_rules: RuleSet) -> None:
    rows = [
        PAYMENT,
        {**PAYMENT, "ip": "203.0.113.7"},
        {**PAYMENT, "card_id": "card_trusted_1"},
        {**PAYMENT, "card_mean_30d": None, "card_new_device": 1, "amount": 150.0},
        {**PAYMENT, "card_count_1h": 3, "amount": 10.0},
    ]
    scores = [0.1, 0.1, 0.99, np.nan, 0.1]
    merchants = ["m_00001", "m_00001", "m_00001", "m_00001", "m_00007"]
    columns = {name: np.array([row.get(name) for row in rows], dtype=object) for name in NAMES}
    verdicts, fired, skipped = fixture_rules.decide_frame(scores, columns, merchants)
    assert verdicts.tolist() == ["allow", "block", "allow", None, "review"]
    assert fired.shape == skipped.shape == (5, len(fixture_rules.rules))
    ids = [r.id for r in fixture_rules.rules]
    assert skipped[3, ids.index("amount_outlier")]
    assert fired[3, ids.index("new_device_high_amount")]  # shadow rules appear in the matrix
    assert not fired[:4, ids.index("merchant_7_velocity")].any()
    assert fired[4, ids.index("merchant_7_velocity")]


CONDITIONS = [
    "f1",
    "not f2",
    "f1 and f2",
    "v > 1",
    "v / w > 1",
    "coalesce(v, 0) >= 1",
    "is_missing(w)",
    "s in lists.l",
    "s == 'b' or f2",
    "not authenticated",
]
RANDOM_NAMES: dict[str, FieldType] = {
    "f1": "bool",
    "f2": "bool",
    "v": "number",
    "w": "number",
    "s": "string",
    "authenticated": "bool",
}


@st.composite
def random_rulesets(draw: st.DrawFn) -> RuleSet:
    # the score bands on either scale (risk_score: the same thresholds x 100), with or without a
    # challenge band (also per merchant), and either authenticated_fallback
    risk = draw(st.booleans())
    k = 100 if risk else 1
    review = draw(st.sampled_from([0.0, 0.3, 0.5]))
    block = draw(st.sampled_from([0.5, 0.8, 1.0]))
    # challenge <= review, also for m1's and m3's overrides (0.2 and the default review)
    challenge = draw(st.sampled_from([None, 0.0] if review == 0.0 else [None, 0.0, 0.05, 0.1, 0.2]))
    lines = [f"score_bands:\n  review: {review * k:g}\n  block: {block * k:g}"]
    if risk:
        lines.append("  scale: risk_score")
    if challenge is not None:
        lines.append(f"  challenge: {challenge * k:g}")
    lines.append("  merchants:")
    lines += [f"    m1: {{review: {0.2 * k:g}}}", f"    m2: {{review: {0.6 * k:g}, block: {0.7 * k:g}}}"]
    if draw(st.booleans()) and review > 0.0:
        lines.append(f"    m3: {{challenge: {0.05 * k:g}}}")
    lines.append(f"authenticated_fallback: {draw(st.sampled_from(['allow', 'review']))}")
    lines += ["lists:\n  l: [a, b]", "rules:"]
    for i in range(draw(st.integers(0, 6))):
        rule = f'  - {{id: r{i}, when: "{draw(st.sampled_from(CONDITIONS))}", '
        rule += f"action: {draw(st.sampled_from(['allow', 'challenge', 'review', 'block']))}"
        if draw(st.integers(0, 4)) == 0:
            rule += ", mode: shadow"
        if draw(st.integers(0, 3)) == 0:
            rule += f", merchants: [{draw(st.sampled_from(['m1', 'm2', 'm1, m3']))}]"
        lines.append(rule + "}")
    return ruleset_from_texts({"r.yaml": "\n".join(lines)}, RANDOM_NAMES)


@st.composite
def random_rows(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    n = draw(st.integers(1, 12))
    values = {
        "f1": st.sampled_from([True, False, None]),
        "f2": st.sampled_from([True, False, None]),
        "v": st.sampled_from([None, np.nan, 0.0, 1.0, 2.0, 5.5]),
        "w": st.sampled_from([None, 0.0, 1.0, 3.0]),
        "s": st.sampled_from([None, "a", "b", "c"]),
        "authenticated": st.sampled_from([True, False, None]),
    }
    rows = [{k: draw(v) for k, v in values.items() if draw(st.integers(0, 9))} for _ in range(n)]
    scores = [
        draw(st.sampled_from([None, np.nan, 0.0, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.95, 1.0])) for _ in range(n)
    ]
    merchants = [draw(st.sampled_from(["m1", "m2", "m3", "m4", None])) for _ in range(n)]
    return rows, scores, merchants


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ruleset=random_rulesets(),
    data=random_rows(),
    fail=st.sampled_from([None, "allow", "challenge", "review", "block"]),
)
def test_decide_frame_matches_decide(ruleset: RuleSet, data: Any, fail: Any) -> None:
    rows, scores, merchants = data
    columns = {name: np.array([row.get(name) for row in rows], dtype=object) for name in RANDOM_NAMES}
    as_floats = np.array([np.nan if s is None else s for s in scores], dtype=float)
    risks = IDENTITY.of_array(as_floats) if ruleset.scale == "risk_score" else None
    verdicts, fired, skipped = ruleset.decide_frame(
        scores, columns, merchants, no_score_verdict=fail, risk_scores=risks
    )
    for i, row in enumerate(rows):
        score = scores[i]
        outcome = ruleset.decide(
            None if score is None else float(score),
            row,
            merchants[i],
            no_score_verdict=fail,
            risk_score=IDENTITY.of(None if score is None else float(score)),
        )
        assert verdicts[i] == outcome.verdict, (i, row, score, merchants[i])
        live = {f.rule_id for f in outcome.fired}
        shadow = {f.rule_id for f in outcome.shadow_fired}
        assert {r.id for j, r in enumerate(ruleset.rules) if fired[i, j]} == live | shadow
        assert {r.id for j, r in enumerate(ruleset.rules) if skipped[i, j]} == set(outcome.skipped)
