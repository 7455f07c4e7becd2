"""Smoke test of bench/forwarding.py: a short run over direct (JSON), the floor relay and mcpstore-proxy (with a
client of each era).

Not a timing test: it checks that the harness starts each target, drives it, and reports its figures (latency and
throughput positive; CPU time, counted in 10 ms clock ticks, may read 0 over so few calls).
Only the forwarding section: the others (bench/scale.py) start dozens of upstream processes, too slow for a test.
No peers (they need their own venvs installed from the registry); --no-install keeps the run offline.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = {
    "direct-json": "direct, JSON responses",
    "floor": "floor: bare isolating relay (bench/floor_relay.py)",
    "mcpstore": "**mcpstore-proxy**",
    "mcpstore-modern": "**mcpstore-proxy**, 2026-07-28 client (sessionless, one `X-MCPStore-Session` per client)",
}


def test_quick_run_reports_every_target(tmp_path: Path) -> None:
    output = tmp_path / "forwarding.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "forwarding.py"),
        "--quick",
        "--no-install",
        "--calls",
        "40",
        "--c8-calls",
        "80",
        "--targets",
        ",".join(LABELS),
        "--sections",
        "forwarding",  # the other sections (memory, tools/list at scale, first call) start many processes: not here
        "--json",
        str(output),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")}
    for label in LABELS.values():
        cells = [cell.strip() for cell in rows[label].strip("|").split("|")]
        assert "skipped" not in cells[1], cells
        numbers = [float(number) for number in re.findall(r"\d+(?:\.\d+)?", " ".join(cells[2:]))]
        assert len(numbers) >= 4, cells  # p50, calls/s (and its ratio), CPU at c=1 and c=8
        timings = numbers[:-2]  # the last two, CPU at c=1 and c=8, may read 0 (see the JSON checks below)
        assert all(number > 0 for number in timings), cells

    report = json.loads(output.read_text())
    by_target = {row["target"]: row for row in report["rows"]}
    assert set(by_target) == set(LABELS)
    for name, row in by_target.items():
        assert "skipped" not in row, row
        for metric in ("c1_p50_ms", "c8_calls_per_s"):
            assert row[metric] > 0, (name, metric, row)
        # CPU time is counted in clock ticks (10 ms): 40 calls of a target that spends 0.2 ms on each can read 0.
        for metric in ("cpu_ms_per_call_c1", "cpu_ms_per_call_c8"):
            assert row[metric] >= 0, (name, metric, row)
    assert by_target["direct-json"]["isolates_sessions"] is None
    assert by_target["floor"]["isolates_sessions"] is True
    assert by_target["mcpstore"]["isolates_sessions"] is True
    assert by_target["mcpstore-modern"]["isolates_sessions"] is True  # one session per X-MCPStore-Session
