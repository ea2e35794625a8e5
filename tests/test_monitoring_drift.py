"""engine/monitoring: quantile bins, the PSI, feature and score drift, the profile file, thresholds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from antifraud.engine.monitoring import (
    Distribution,
    ReferenceProfile,
    Thresholds,
    build_profile,
    feature_drift,
    psi,
    score_drift,
)
from antifraud.engine.monitoring.drift import (
    PSI_FLOOR,
    FeatureDrift,
    ThresholdsError,
    measured,
    verdict_mix,
    verdict_shift,
)
from antifraud.engine.monitoring.flags import Flag, level_of, ranked, traffic_flags
from antifraud.engine.monitoring.profile import ProfileError


def test_quantile_bins_are_right_closed_and_merge_point_masses() -> None:
    values = np.array([0.0] * 70 + list(range(1, 31)), dtype=float)
    d = Distribution.of(values, bins=10)
    # the 1/10 .. 7/10 quantiles are all 0: one edge, and the zeros fill its bin (-inf, 0] alone
    assert d.edges[0] == 0.0 and d.shares[0] == pytest.approx(0.7)
    assert list(d.edges) == sorted(set(d.edges))
    assert len(d.shares) == len(d.edges) + 1 and sum(d.shares) == pytest.approx(1.0)
    counts, missing = d.counts(np.array([0.0, 0.0, 1e9, np.nan]))
    assert missing == 1 and counts[0] == 2 and counts[-1] == 1


def test_missing_values_are_counted_apart() -> None:
    d = Distribution.of(np.array([1.0, 2.0, np.nan, np.nan]), bins=2)
    assert d.missing == 0.5 and sum(d.shares) == pytest.approx(1.0)
    counts, missing = d.counts(np.array([None, 1.0, None], dtype=object))
    assert missing == 2 and counts.sum() == 1
    empty = Distribution.of(np.full(3, np.nan))
    assert empty == Distribution((), (), 1.0)
    assert psi(empty, np.array([1.0, 2.0])) == 0.0


def test_psi_by_hand() -> None:
    reference = Distribution((0.5,), (0.5, 0.5), 0.0)
    assert psi(reference, np.array([0.0, 1.0])) == 0.0
    # 3 in 4 below the edge: (0.75-0.5) ln(1.5) + (0.25-0.5) ln(0.5)
    expected = 0.25 * math.log(1.5) - 0.25 * math.log(0.5)
    assert psi(reference, np.array([0.0, 0.1, 0.2, 1.0])) == pytest.approx(expected)
    # a bin empty now is floored, not infinite
    floored = (PSI_FLOOR - 0.5) * math.log(PSI_FLOOR / 0.5) + 0.5 * math.log(2)
    assert psi(reference, np.zeros(10)) == pytest.approx(floored)


def test_same_distribution_is_stable_and_a_scaled_one_is_not() -> None:
    rng = np.random.default_rng(3)
    reference = Distribution.of(rng.lognormal(3, 1, 20_000))
    assert psi(reference, rng.lognormal(3, 1, 5_000)) < 0.02
    assert psi(reference, rng.lognormal(3, 1, 5_000) * 3) > 0.25


def test_feature_and_score_drift() -> None:
    rng = np.random.default_rng(5)
    amounts, hours = rng.lognormal(3, 1, 4000), rng.integers(0, 24, 4000).astype(float)
    hours[:400] = np.nan
    profile = build_profile(
        "m-1", ("2026-02-04", "2026-02-12"), {"amount": amounts, "hour": hours}, rng.beta(1, 50, 4000)
    )
    assert profile.rows == 4000 and profile.features["hour"].missing == pytest.approx(0.1)
    now = {"amount": rng.lognormal(3, 1, 1000) * 4, "hour": np.full(1000, np.nan)}
    by_name = {d.feature: d for d in feature_drift(profile, now)}
    assert list(by_name) == ["amount", "hour"]
    assert by_name["amount"].psi > 0.25 and by_name["amount"].present == 1000
    assert by_name["hour"].missing_now == 1.0 and by_name["hour"].missing_increase == pytest.approx(0.9)
    assert by_name["hour"].psi == 0.0 and by_name["hour"].rows == 1000
    # a profiled feature the period lacks altogether is missing on every row
    assert feature_drift(profile, {"amount": amounts[:10]})[1].missing_now == 1.0
    assert score_drift(profile, rng.beta(1, 50, 2000)) < 0.05
    assert score_drift(profile, rng.beta(1, 5, 2000)) > 0.25


def test_profile_round_trip_and_absent_file(tmp_path: Path) -> None:
    assert ReferenceProfile.load(tmp_path) is None
    profile = build_profile(
        "m-1",
        ("2026-02-04", "2026-02-12"),
        {"x": np.array([0.1, 0.2, 0.3, np.nan])},
        np.array([0.01, 0.02, 0.5, 0.9]),
        {"allow": 0.75, "block": 0.25},
    )
    path = profile.save(tmp_path)
    assert path == tmp_path / "reference.json"
    assert ReferenceProfile.load(tmp_path) == profile
    path.write_text(json.dumps({**profile.to_dict(), "format": 99}))
    with pytest.raises(ProfileError, match=r"reference\.json: format 99"):
        ReferenceProfile.load(tmp_path)
    with pytest.raises(ValueError, match="3 values for 4 scores"):
        build_profile("m", ("a", "b"), {"x": np.zeros(3)}, np.zeros(4))


def test_verdict_mix_and_shift() -> None:
    mix = verdict_mix(["allow", "allow", "review", "block"])
    assert mix == {"allow": 0.5, "block": 0.25, "review": 0.25}
    assert verdict_shift({"allow": 0.9, "review": 0.1}, mix) == pytest.approx(
        {"allow": -0.4, "block": 0.25, "review": 0.15}
    )
    assert verdict_mix([]) == {}


def test_thresholds_from_yaml(tmp_path: Path) -> None:
    assert Thresholds.load(None) == Thresholds()
    assert Thresholds().ignore == ("hour_of_day", "day_of_week")
    path = tmp_path / "t.yaml"
    path.write_text("psi_alert: 0.3\nmin_rows: 100\n")
    assert Thresholds.load(path) == Thresholds(psi_alert=0.3, min_rows=100)
    path.write_text("ignore: [card_age_days]\n")
    assert Thresholds.load(path).ignore == ("card_age_days",)
    path.write_text("recall_drop_alert: 0.3\nperformance_min_frauds: 50\nperformance_min_maturity: 0.9\n")
    loaded = Thresholds.load(path)
    assert (loaded.recall_drop_alert, loaded.performance_min_frauds, loaded.performance_min_maturity) == (
        0.3,
        50,
        0.9,
    )
    assert isinstance(loaded.performance_min_frauds, int) and loaded.recall_drop_warn == 0.1
    for text, error in (
        ("ignore: card_age_days\n", "list of feature names"),
        ("psi_alrt: 0.3\n", "unknown threshold 'psi_alrt'"),
        ("min_rows: 1.5\n", "whole number"),
        ("psi_warn: high\n", "psi_warn must be a number"),
        ("performance_min_frauds: 2.5\n", "whole number"),
        ("performance_min_maturity: 80\n", "a share, between 0 and 1"),
        ("ap_drop_alert: 1.5\n", "a share, between 0 and 1"),
        ("recall_drop_alert: -0.1\n", "must be a number >= 0"),
    ):
        path.write_text(text)
        with pytest.raises(ThresholdsError, match=error):
            Thresholds.load(path)


# ----------------------------------------------------------------------------------- the flag rules


def drift(
    feature: str, psi: float, missing: tuple[float, float] = (0.0, 0.0), present: int = 1000
) -> FeatureDrift:
    return FeatureDrift(feature, psi, missing[0], missing[1], rows=1000, present=present)


def flagged(flags: list[Flag]) -> dict[tuple[str, str], str]:
    return {(f.kind, f.subject): f.level for f in flags}


def test_each_traffic_flag_at_its_threshold() -> None:
    t = Thresholds()
    drifts = [
        drift("amount", 0.25),  # alert from psi_alert on
        drift("mcc", 0.1),  # a warning from psi_warn on
        drift("quiet", 0.0999),
        drift("sparse", 3.2, present=499),  # the PSI of fewer than min_rows values is not judged ...
        drift("device", 0.0, missing=(0.6, 0.71)),  # ... a missing share rising by more than 10 points is
        drift("device_at", 0.0, missing=(0.6, 0.7)),
        drift("hour_of_day", 9.0, missing=(0.0, 1.0)),  # ignored: never flagged
    ]
    reference = {"allow": 0.98, "review": 0.01, "block": 0.01}
    now = {"allow": 0.90, "review": 0.04, "block": 0.01, "challenge": 0.05}
    found = traffic_flags(t, 1000, drifts, 0.1, reference, now, 0.011)
    assert flagged(found) == {
        ("feature_psi", "amount"): "alert",
        ("feature_psi", "mcc"): "warn",
        ("feature_missing", "device"): "alert",
        ("score_psi", "score"): "warn",
        ("verdict_shift", "allow"): "alert",  # -8 points; challenge's +5 is not more than 5
        ("degraded_share", "degraded"): "alert",
    }
    by = {(f.kind, f.subject): f for f in found}
    assert by["feature_psi", "amount"].message == "amount: PSI 0.250 >= 0.25"
    assert by["feature_psi", "mcc"].limit == t.psi_warn
    assert by["verdict_shift", "allow"].message == (
        "allow: 90.0% of payments, 98.0% in the reference (-8.0%, more than 5% either way)"
    )
    assert by["feature_missing", "device"].value == pytest.approx(0.11)
    score = traffic_flags(t, 1000, [], 0.25, {}, now, 0.0)  # no reference mix: not compared
    assert [(f.kind, f.level, f.limit) for f in score] == [("score_psi", "alert", t.score_psi_alert)]
    assert traffic_flags(t, 1000, [], None, {}, {}, 0.0) == []  # no score drift measured


def test_below_min_rows_nothing_is_flagged() -> None:
    args = ([drift("amount", 5.0)], 5.0, {"allow": 1.0}, {"block": 1.0}, 1.0)
    assert traffic_flags(Thresholds(), 499, *args) == []
    assert len(traffic_flags(Thresholds(), 500, *args)) == 5


def test_levels_and_ranking() -> None:
    assert level_of(0.2, 0.1, 0.2) == ("alert", 0.2)
    assert level_of(0.1, 0.1, 0.2) == ("warn", 0.1)
    assert level_of(0.09, 0.1, 0.2) is None
    flags = [
        Flag("warn", "feature_psi", "a", 0.2, 0.1, ""),
        Flag("alert", "verdict_shift", "allow", -0.3, 0.05, ""),
        Flag("alert", "feature_psi", "b", 0.26, 0.25, ""),
    ]
    assert [f.subject for f in ranked(flags)] == ["allow", "b", "a"]


def test_measured_leaves_degraded_answers_and_other_models_scores_out() -> None:
    degraded = np.array([False, True, False, False, False])
    versions = np.array(["m-1", "m-1", "m-0", None, "m-1"], dtype=object)
    scores = np.array([0.1, 0.2, 0.3, np.nan, np.nan])
    features, score = measured(degraded, versions, scores, "m-1")
    assert features.tolist() == [True, False, True, True, True]
    assert score.tolist() == [True, False, False, False, False]  # m-1's, not degraded, with a score
    assert not measured(degraded, versions, scores, None)[1].any()
