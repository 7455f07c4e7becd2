"""The container image, built on this machine and driven by a real MCP client: scripts/build_image.sh, whose summary
lines join the run's "peer results". Where this machine cannot build or run images (not root, no apt-get, Debian's
archive out of reach), the script exits 77 and says why, and the test skips with that reason."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Final

import pytest

from tests.support import PROJECT_ROOT, REPORT

SCRIPT: Final = PROJECT_ROOT / "scripts" / "build_image.sh"
EXIT_SKIP: Final = 77
SUMMARY_PREFIX: Final = "build_image: "
SCRIPT_TIMEOUT_SECONDS: Final = 900
"""Cold (the Debian packages installed, the base made with mmdebstrap, every wheel fetched) it took about 2 minutes
here, warm about 15 s; the bound leaves room for a slow archive without letting a hang eat CI's 90 minutes."""
STOP_SECONDS: Final = 60
"""After a timeout, how long the script gets to remove its containers (its SIGTERM trap) before it is killed."""


def run_script() -> tuple[int, str]:
    """The script's exit status and its output (stdout and stderr together), within `SCRIPT_TIMEOUT_SECONDS`."""
    process = subprocess.Popen(
        ["bash", str(SCRIPT)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a timeout stops podman and everything else it started
    )
    try:
        output, _ = process.communicate(timeout=SCRIPT_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(f"{SCRIPT.name} took longer than {SCRIPT_TIMEOUT_SECONDS} s; its output:\n{output[-5000:]}")
    return process.returncode, output


def test_the_image_builds_here_refuses_to_run_open_and_serves_an_mcp_client_as_non_root() -> None:
    status, output = run_script()
    summary = [line.removeprefix(SUMMARY_PREFIX) for line in output.splitlines() if line.startswith(SUMMARY_PREFIX)]
    print("\n".join(summary))  # shown with -rP, and on failure
    REPORT.extend(f"container: {line}" for line in summary)
    if status == EXIT_SKIP:
        reasons = [line.removeprefix("skip: ") for line in summary if line.startswith("skip: ")]
        pytest.skip(f"{SCRIPT.name}: {reasons[0] if reasons else 'cannot build or run images on this machine'}")
    assert status == 0, f"{SCRIPT.name} exited {status}; its output:\n{output[-5000:]}"
    checks = {
        "without auth: refused to start, exit 2": "the image must not serve 0.0.0.0 without auth",
        "/ready answered 200": "readiness",
        "probes with a pod address as Host (as a kubelet asks): /health 200, /ready 200": "Kubernetes' probes",
        "a request without the token: HTTP 401": "the bearer token is required",
        "tools/call fixture_echo answered 'hello from the host'": "a tool call through the container",
        "session state kept between calls": "the client's upstream session",
        "non-root: all": "every process runs as uid 10001",
        "HEALTHCHECK: healthy": "the image's HEALTHCHECK",
        "SIGTERM: drained and exited 0": "an orderly stop as PID 1",
        "demo upstreams: 6 tools listed, notes kept ['kept'] in the session": "the Kubernetes config in the image",
        "deploy/kubernetes/configmap.yaml's config: served the demo upstreams, drained and exited 0": "its stop",
    }
    missing = [f"{what} ({line!r})" for line, what in checks.items() if not any(s.startswith(line) for s in summary)]
    assert not missing, f"checks missing from the summary: {missing}; the summary:\n" + "\n".join(summary)
