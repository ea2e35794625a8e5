"""The logistic baseline, realised false-positive rates and the headline table (small synthetic data)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from sklearn.metrics import roc_auc_score

from antifraud.training.baselines import LOG1P_FEATURES, LOGISTIC_FEATURES, LogisticBaseline
from antifraud.training.config import TrainingError
from antifraud.training.headline import headline_table, print_headline
from antifraud.training.metrics import model_vs_logistic, realised_fpr, threshold_at_fpr


def frame(n: int = 3000, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """Payments whose fraud odds grow with the amount and the card's 24-hour count."""
    rng = np.random.default_rng(seed)
    features = pd.DataFrame(
        {
            "amount": rng.lognormal(3.5, 1.0, n),
            "card_count_24h": rng.poisson(2, n).astype(float),
            "card_mean_7d": np.where(rng.random(n) < 0.3, np.nan, rng.lognormal(3.5, 0.5, n)),
            "merchant_fraud_rate_30d": rng.beta(1, 50, n),
            "hour_of_day": rng.integers(0, 24, n).astype(float),  # not in the baseline's set
        }
    )
    logit = -7 + 1.2 * np.log1p(features["amount"]) + 0.5 * features["card_count_24h"]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return features, y


def test_fit_uses_only_the_present_features_of_its_set() -> None:
    features, y = frame()
    model = LogisticBaseline.fit(features, y)
    assert model.features == ("amount", "card_count_24h", "card_mean_7d", "merchant_fraud_rate_30d")
    assert set(model.features) <= set(LOGISTIC_FEATURES)
    assert (
        set(model.log1p)
        == {"amount", "card_count_24h", "card_mean_7d"}
        == set(model.features) & LOG1P_FEATURES
    )
    # the median imputes the missing card_mean_7d, in the raw (not log) scale
    observed = features["card_mean_7d"].dropna()
    assert model.impute[2] == pytest.approx(float(observed.median()))
    scores = model.predict(features)
    assert scores.shape == (len(features),) and np.all((scores > 0) & (scores < 1))
    assert roc_auc_score(y, scores) > 0.8  # it learns the planted signal
    assert model.coef[0] > 0 and model.coef[1] > 0


def test_to_dict_is_plain_json_and_round_trips(tmp_path: Path) -> None:
    features, y = frame()
    model = LogisticBaseline.fit(features, y)
    text = json.dumps(model.to_dict())  # plain JSON: no numpy scalars, no pickle
    again = LogisticBaseline.from_dict(json.loads(text))
    assert again == model
    np.testing.assert_allclose(again.predict(features), model.predict(features), rtol=0, atol=0)
    path = tmp_path / "baseline_logistic.json"
    model.save(path)
    assert LogisticBaseline.load(path) == model


def test_predict_treats_an_absent_feature_as_missing() -> None:
    features, y = frame()
    model = LogisticBaseline.fit(features, y)
    without = features.drop(columns="card_mean_7d")
    assert model.missing(without) == ["card_mean_7d"]
    filled = features.assign(card_mean_7d=model.impute[2])
    np.testing.assert_allclose(model.predict(without), model.predict(filled))


def test_fit_refuses_what_it_cannot_fit() -> None:
    features, y = frame(200)
    with pytest.raises(TrainingError, match="none of its features"):
        LogisticBaseline.fit(features[["hour_of_day"]], y)
    with pytest.raises(TrainingError, match="both frauds and legitimate"):
        LogisticBaseline.fit(features, np.zeros(len(features)))


def test_from_dict_names_what_is_wrong(tmp_path: Path) -> None:
    features, y = frame(500)
    good = LogisticBaseline.fit(features, y).to_dict()
    with pytest.raises(TrainingError, match="format"):
        LogisticBaseline.from_dict({**good, "format": "pickle"})
    with pytest.raises(TrainingError, match="'coef' must be 4 finite numbers"):
        LogisticBaseline.from_dict({**good, "coef": [1.0]})
    with pytest.raises(TrainingError, match="'log1p' names features"):
        LogisticBaseline.from_dict({**good, "log1p": ["nope"]})
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(TrainingError, match=str(path)):
        LogisticBaseline.load(path)


# ---------------------------------------------------------------------------------- realised FPR


def test_realised_fpr_is_the_share_of_legitimate_payments_at_or_above_each_threshold() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    got = realised_fpr(scores, labels, {"review": 0.55, "block": 0.8})
    assert got == {"review": pytest.approx(3 / 8), "block": pytest.approx(1 / 8)}
    # a threshold set at a target FPR reaches at most that FPR on the data it was set on
    rng = np.random.default_rng(0)
    s, y = rng.random(5000), (rng.random(5000) < 0.02).astype(int)
    for fpr in (0.001, 0.01, 0.1):
        t = threshold_at_fpr(s, y, fpr)
        assert realised_fpr(s, y, {"review": t, "block": t})["block"] <= fpr
    with pytest.raises(TrainingError, match="no legitimate"):
        realised_fpr(scores[8:], labels[8:], {"review": 0.5, "block": 0.5})


# ---------------------------------------------------------------------------------- headline


def side(ap: float, cp: float, block_fpr: float = 0.001) -> dict[str, object]:
    return {
        "roc_auc": 0.9,
        "average_precision": ap,
        "card_precision_at_100": cp,
        "recall_at_fpr_0.001": 0.4,
        "recall_at_fpr_0.01": 0.6,
        "realised_fpr": {"review": 0.012, "block": block_fpr},
    }


def printed(metrics: dict[str, object]) -> str:
    out = io.StringIO()
    print_headline(Console(file=out, width=120), metrics)
    return out.getvalue()


def test_headline_prints_the_three_scores_and_the_fpr_reached() -> None:
    metrics = {
        "title": "Evaluation",
        "aimed_fpr": {"review": 0.01, "block": 0.001},
        "model": side(0.80, 0.09, block_fpr=0.0035),
        "logistic": side(0.50, 0.07),
        "baseline": side(0.40, 0.06),
    }
    text = printed(metrics)
    for label in ("model", "logistic", "rules-only", "ROC AUC", "average precision", "card precision@100"):
        assert label in text
    assert "FPR at block (aim 0.10%)" in text and "0.35%" in text  # aimed vs reached
    assert "0.800" in text and "0.500" in text
    assert "does not beat the logistic baseline" not in text
    assert headline_table(metrics).row_count == 7


def test_headline_says_plainly_when_the_model_loses_to_the_logistic_baseline() -> None:
    metrics = {"model": side(0.40, 0.09), "logistic": side(0.50, 0.07), "baseline": side(0.30, 0.05)}
    text = printed(metrics)
    assert "does not beat the logistic baseline" in text and "average precision 0.400 vs 0.500" in text
    sentence = model_vs_logistic({"model": side(0.6, 0.05), "logistic": side(0.5, 0.07)})
    assert sentence is not None and "card precision@100 0.050 vs 0.070" in sentence


def test_headline_shows_mean_and_spread_of_folds() -> None:
    def spread(side_metrics: dict[str, object]) -> dict[str, object]:
        def one(v: object) -> object:
            if isinstance(v, dict):
                return {k: one(x) for k, x in v.items()}
            return {"mean": v, "std": 0.01}

        return {k: one(v) for k, v in side_metrics.items()}

    metrics = {
        "title": "Prequential",
        "folds": [{}, {}, {}],
        "model": spread(side(0.7, 0.09)),
        "logistic": spread(side(0.75, 0.08)),
        "baseline": spread(side(0.3, 0.05)),
    }
    text = printed(metrics)
    assert "0.700 ± 0.010" in text and "over 3 folds" in text
    assert "average precision 0.700 vs 0.750" in text
