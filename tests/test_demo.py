"""The demo's table of the reviews waiting: one line per case at 100 columns, the reasons as codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rich.console import Console

from antifraud.engine.demo import REASONS_WIDTH, fit_codes, review_table
from antifraud.engine.review.queue import Case

LONG_REASONS = {
    "challenge": "failed",
    "rules": [
        {"rule": "device_many_cards", "action": "review", "reason": "DEVICE_VELOCITY"},
        {"rule": "new_device_far_above_habit", "action": "review", "reason": "ACCOUNT_TAKEOVER"},
        {"rule": "no_code_rule", "action": "review", "reason": None},
    ],
    "band": {"band": "review", "code": "SCORE_BAND_REVIEW", "scale": "risk_score", "threshold": 58},
}


def _case(i: int, reasons: dict[str, object]) -> Case:
    decided = (datetime.now(UTC) - timedelta(hours=23, minutes=59)).isoformat()
    return Case(
        transaction_id=f"tx_{i:09d}",
        merchant="mer_8395dfc07c",
        amount=19690.5,
        currency="USD",
        risk_score=100,
        score=0.99,
        reasons=reasons,
        card="card_1",
        timestamp=decided,
        decided_at=decided,
        queued_at=decided,
        source="decision",
        status="open",
    )


def test_the_review_table_fits_100_columns_one_line_per_case() -> None:
    console = Console(width=100, record=True, color_system=None)
    short = {
        "rules": [{"rule": "big", "action": "review", "reason": "BIG_AMOUNT"}],
        "band": {"band": "review", "code": "SCORE_BAND_REVIEW", "scale": "risk_score", "threshold": 58},
    }
    console.print(review_table([_case(1, LONG_REASONS), _case(2, short)], 42))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 100
    rows = [line for line in lines if "tx_0000000" in line]
    assert len(rows) == 2, "each case on one line"
    assert "challenge failed +4" in rows[0]
    assert "BIG_AMOUNT, score band ≥58" in rows[1] and "23 h 59 min" in rows[1]
    assert "reviews waiting in the console: 42" in lines[0]


def test_codes_are_cut_with_a_count_of_the_rest() -> None:
    codes = ["ACCOUNT_TAKEOVER", "DEVICE_VELOCITY", "score band ≥58"]
    assert fit_codes(codes, 100) == "ACCOUNT_TAKEOVER, DEVICE_VELOCITY, score band ≥58"
    assert fit_codes(codes, REASONS_WIDTH) == "ACCOUNT_TAKEOVER +2"
    assert fit_codes(codes, 5) == "ACCOUNT_TAKEOVER +2"  # the first always shows
    assert fit_codes([], 10) == ""
