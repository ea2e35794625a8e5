"""What the benchmark prints and stores: Markdown tables of the cells, the machine, the JSON results."""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from antifraud.engine.loadgen.stats import STAGES, CellResult, fmt, median_of, passes
from antifraud.engine.settings import ROOT

REPORTS = ROOT / "reports"


def report(results: list[CellResult], args: argparse.Namespace) -> str:
    """Markdown tables: per cell, medians over repeats; then saturation and stages."""
    lines = []
    by_cell: dict[tuple[int, float], list[CellResult]] = collections.defaultdict(list)
    for r in results:
        by_cell[(r.workers, r.rate)].append(r)
    ordered = sorted(by_cell.items())

    lines.append(
        "| workers | offered /s | achieved /s | p50 ms | p99 ms | p99.9 ms | max ms | errors "
        "| timeouts | repeats | p99 each | client lag p99 ms | CPU cores: server / redis / client / others |"
    )
    lines.append("|---:" * 13 + "|")
    for (workers, rate), cells in ordered:
        cpu = {
            role: float(np.median([c.cpu_util.get(role, 0.0) for c in cells])) for role in cells[0].cpu_util
        }
        lines.append(
            f"| {workers} | {rate:,.0f} | {fmt(median_of(cells, 'achieved'), 0)} "
            f"| {fmt(median_of(cells, 'p50'))} "
            f"| {fmt(median_of(cells, 'p99'))} | {fmt(median_of(cells, 'p999'))} "
            f"| {fmt(median_of(cells, 'max'), 1)} | {sum(c.errors for c in cells)} "
            f"| {sum(c.timeouts for c in cells)} | {len(cells)} "
            f"| {' / '.join(fmt(c.p99, 1) for c in cells)} | {fmt(median_of(cells, 'lag_p99'))} "
            f"| {cpu.get('server', 0):.2f} / {cpu.get('redis', 0):.2f} / {cpu.get('client', 0):.2f} "
            f"/ {cpu.get('others', 0):.2f} |"
        )
    lines.append("")
    for workers in dict.fromkeys(w for (w, _), _ in ordered):
        rates = [rate for (w, rate), _ in ordered if w == workers]
        sat = [r for r in rates if passes(by_cell[(workers, r)], args.saturation_p99_ms)]
        aim = [r for r in rates if passes(by_cell[(workers, r)], args.aim_p99_ms)]
        lines.append(
            f"- {workers} worker(s): saturation rate "
            f"{fmt(max(sat), 0) if sat else 'below the lowest rate'}/s "
            f"(achieved >= 95 %, p99 <= {args.saturation_p99_ms:g} ms, failures <= 0.1 %); "
            f"highest rate with p99 <= {args.aim_p99_ms:g} ms: {fmt(max(aim), 0) if aim else 'none'}/s"
        )
    lines.append("")
    lines.append(
        "Where the time goes (medians over repeats of each stage's p50 / p99, ms; "
        "outside = client-observed service time - scorer stages):"
    )
    lines.append("")
    lines.append(
        "| workers | offered /s | " + " | ".join(STAGES) + " | scorer total allow / flagged p50 "
        "| CPU us/request: server / redis / client | busiest worker's CPU share, each repeat "
        "| slowest 1 %: review/block / overlapping one |"
    )
    lines.append("|---:" * (6 + len(STAGES)) + "|")
    for (workers, rate), cells in ordered:
        stage_cols = " | ".join(
            f"{fmt(float(np.median([c.stage_p50[s] for c in cells])))} / "
            f"{fmt(float(np.median([c.stage_p99[s] for c in cells])))}"
            for s in STAGES
        )
        cpu = {
            role: float(np.median([c.cpu_us_per_request.get(role, 0.0) for c in cells]))
            for role in cells[0].cpu_us_per_request
        }
        shares = " / ".join(f"{max(c.worker_share, default=1.0):.2f}" for c in cells)
        lines.append(
            f"| {workers} | {rate:,.0f} | {stage_cols} "
            f"| {fmt(median_of(cells, 'total_allow_p50'))} / "
            f"{fmt(median_of(cells, 'total_flagged_p50'))} | {cpu.get('server', 0):,.0f} / "
            f"{cpu.get('redis', 0):,.0f} / {cpu.get('client', 0):,.0f} | {shares} "
            f"| {fmt(100 * median_of(cells, 'slow_flagged'), 0)} % / "
            f"{fmt(100 * median_of(cells, 'slow_overlapping_flagged'), 0)} % |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "engine", "features", "rules", "models"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return {
        # the code measured: other people's uncommitted edits count too
        "code": head.strip() + (f" + uncommitted: {', '.join(ln[3:] for ln in dirty)}" if dirty else ""),
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_before": os.getloadavg(),
    }


def write_results(
    args: argparse.Namespace, info: dict[str, Any], results: list[CellResult], text: str
) -> None:
    """The settings, the machine, every cell and the printed report as JSON (`--out`, or reports/)."""
    out = args.out or REPORTS / f"load_http-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out.write_text(
        json.dumps(
            _finite(
                {"machine": info, "args": settings, "cells": [asdict(r) for r in results], "report": text}
            ),
            indent=1,
            default=str,
        )
    )
    print(f"results: {out}")


def _finite(value: Any) -> Any:
    """JSON-safe copy: infinite latencies (timeouts) become "inf", NaN becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else "inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
