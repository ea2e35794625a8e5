"""CPU time of processes and of the whole machine, from /proc (Linux): who used the cores meanwhile."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of processes (their own threads, not their children)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all but idle and iowait, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


@dataclass
class CpuMark:
    """CPU seconds of each role and the wall clock at one instant."""

    wall: float
    cpu: dict[str, float]


def cpu_mark(pids: Mapping[str, Sequence[int]]) -> CpuMark:
    """CPU seconds of each role, and of the whole machine as "machine" (all processes, all cores)."""
    cpu = {role: cpu_seconds(p) for role, p in pids.items()}
    cpu["machine"] = machine_busy_seconds()
    return CpuMark(time.perf_counter(), cpu)


def wait_quiet(ours: Sequence[int], max_cores: float, max_wait_s: float) -> float:
    """Wait (at most max_wait_s) until the rest of the machine uses under max_cores; returns its load.

    On a shared machine other people's jobs take the cores the service needs; a cell measured then
    measures them. The load of everything but our processes is sampled over half a second.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before, mine = machine_busy_seconds(), cpu_seconds(ours)
        time.sleep(0.5)
        others = (machine_busy_seconds() - before - (cpu_seconds(ours) - mine)) / 0.5
        if others <= max_cores or time.monotonic() >= deadline:
            return others
        time.sleep(0.5)
