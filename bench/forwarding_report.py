"""What bench/forwarding.py reports beside its figures: the markdown table, the machine, its load, the source."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_overhead import ROOT


def table(rows: list[dict[str, Any]]) -> str:
    floor = next((row for row in rows if row["target"] == "floor" and "skipped" not in row), None)
    lines = [
        "| target | isolates sessions | c=1 p50 ms | c=8 calls/s (× floor) | CPU ms per call c=1 / c=8 |",  # noqa: RUF001
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['label']} | skipped: {row['skipped'].replace('|', '/')} | | | |")
            continue
        isolates: str
        match row["isolates_sessions"]:
            case None:
                isolates = "—"
            case str(text):
                isolates = text
            case observed:
                isolates = "yes" if observed else "no"
        throughput = f"{row['c8_calls_per_s']:.0f}"
        if floor is not None:
            throughput += f" ({row['c8_calls_per_s'] / floor['c8_calls_per_s']:.2f}×)"  # noqa: RUF001
        cpu = f"{row['cpu_ms_per_call_c1']:.2f} / {row['cpu_ms_per_call_c8']:.2f}"
        if row["direct"]:
            cpu = f"(whole server {cpu})"
        lines.append(f"| {row['label']} | {isolates} | {row['c1_p50_ms']:.2f} | {throughput} | {cpu} |")
    return "\n".join(lines)


def load_average() -> str:
    """The machine's load (1, 5, 15 min): anything above what this run adds means other work shared the cores."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def source_state() -> dict[str, Any]:
    """The commit measured, and the package files that differ from it (a run measures the working tree)."""

    def git(*arguments: str) -> str:
        done = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "modified": git("status", "--short", "mcpstore_proxy").splitlines()}
