"""Fixtures of the reliability suite, and the summary of its figures at the end of the run."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .helpers import FIGURES, ROOT, train_small_model


@pytest.fixture(scope="session")
def swap_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second real model (small, trained on a simulated history) to swap in under load."""
    started = time.perf_counter()
    directory = train_small_model(tmp_path_factory.mktemp("swap") / "next")
    print(f"[reliability] trained the swap model in {time.perf_counter() - started:.1f} s")
    return directory


MODULE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Time spent per module (setup + call + teardown of its tests), for the summary."""
    module = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
    MODULE_SECONDS[module] = MODULE_SECONDS.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES.items:
        return
    for module, seconds in MODULE_SECONDS.items():
        FIGURES.add("time", f"tests/reliability/{module}", f"{seconds:.0f} s")
    text = FIGURES.markdown()
    elapsed = time.monotonic() - FIGURES.started
    terminalreporter.section("reliability figures")
    terminalreporter.write_line(text)
    terminalreporter.write_line(f"(figures recorded over {elapsed:.0f} s)")
    reports = ROOT / "reports"
    reports.mkdir(exist_ok=True)
    out = reports / f"reliability-{datetime.now(UTC):%Y%m%dT%H%M%S}.md"
    out.write_text(text + "\n")
    terminalreporter.write_line(f"figures written to {out.relative_to(ROOT)}")
