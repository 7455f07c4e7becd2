"""The systems under test of bench/forwarding.py: how each is launched, and the peers' pinned venvs.

A `Target` names one system; its `prepare` writes what the system needs (a config, a launcher) into the run's
scratch directory and returns the `Launch`: the command line, the URL it serves, and the HTTP upstream it needs
running first, if any. The peers are installed on first use, each in its own venv under bench/.venvs/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_overhead import ECHO_SERVER, ROOT, client, free_port

BENCH = ROOT / "bench"
VENVS = BENCH / ".venvs"
FLOOR_RELAY = BENCH / "floor_relay.py"
FORWARDING = BENCH / "forwarding.py"
UPSTREAM = [sys.executable, str(ECHO_SERVER), "stdio"]

# Pinned installs, one venv each; the floor's is optional (it falls back to this venv's uvicorn defaults).
FLOOR_REQUIREMENTS = ["uvicorn==0.54.0", "httptools==0.9.0", "uvloop==0.23.0", "orjson==3.13.0"]
MCP_PROXY_REQUIREMENTS = ["mcp-proxy==0.13.*"]
FASTMCP_REQUIREMENTS = ["fastmcp==4.1.6"]

FASTMCP_LAUNCHER = """\
import sys
from fastmcp.client.transports import StdioTransport
from fastmcp.server.providers.proxy import FastMCPProxy, StatefulProxyClient

upstream = StatefulProxyClient(StdioTransport(command=sys.argv[2], args=sys.argv[3:]))
proxy = FastMCPProxy(client_factory=upstream.new_stateful, name="bench")
proxy.run(transport="http", host="127.0.0.1", port=int(sys.argv[1]), show_banner=False, log_level="warning")
"""


@dataclass
class Launch:
    argv: list[str]
    url: str
    ready_path: str = "/mcp"
    notes: list[str] = field(default_factory=list[str])
    version: str = ""
    upstream_argv: list[str] | None = None  # an HTTP upstream that this target needs running first (pinned with it)
    upstream_url: str = ""


@dataclass
class Target:
    name: str
    label: str
    direct: bool
    prepare: Callable[[Path, int, bool], Launch]
    upstream: str = "stdio"
    client_mode: str = "legacy"
    """The load's client: "legacy" (the handshake era, a session per client) or "2026-07-28" (sessionless; each
    client names its own session with `X-MCPStore-Session`, which only mcpstore-proxy reads)."""

    def client(self, url: str, index: int) -> AbstractAsyncContextManager[Client]:
        """The load's client number `index`: in a session of its own, in this target's era."""
        if self.client_mode == "legacy":
            return client(url)
        return client(url, headers={"X-MCPStore-Session": f"bench-{index}"}, mode=self.client_mode)


# ---------------------------------------------------------------------------------------------------- venvs


def ensure_venv(name: str, requirements: list[str], install: bool) -> Path:
    """The python of bench/.venvs/NAME with exactly these pinned requirements, installed on first use."""
    home = VENVS / name
    python = home / "bin" / "python"
    marker = home / ".bench-requirements"
    wanted = "\n".join(requirements)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if not install:
        raise RuntimeError(f"{home.relative_to(ROOT)} is not installed (--no-install)")
    if home.exists():
        shutil.rmtree(home)
    VENVS.mkdir(parents=True, exist_ok=True)
    print(f"installing {' '.join(requirements)} into {home.relative_to(ROOT)} ...", file=sys.stderr, flush=True)
    steps = [[sys.executable, "-m", "venv", str(home)], [str(python), "-m", "pip", "install", "-q", *requirements]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            errors = [line for line in lines if "ERROR" in line] or lines[-1:] or [f"exit {done.returncode}"]
            raise RuntimeError(f"cannot install {' '.join(requirements)}: {errors[0].strip()[:200]}")
    marker.write_text(wanted)
    return python


def venv_version(python: Path, distribution: str) -> str:
    done = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({distribution!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


# ---------------------------------------------------------------------------------------------------- targets


def prepare_direct(json_response: bool) -> Callable[[Path, int, bool], Launch]:
    def prepare(workdir: Path, port: int, install: bool) -> Launch:
        framing = "json" if json_response else "sse"
        argv = [sys.executable, str(FORWARDING), "--serve-direct", framing, str(port)]
        return Launch(argv, f"http://127.0.0.1:{port}/mcp", version=f"mcp {venv_version(Path(sys.executable), 'mcp')}")

    return prepare


def prepare_floor(workdir: Path, port: int, install: bool) -> Launch:
    notes: list[str] = []
    try:
        python = ensure_venv("floor", FLOOR_REQUIREMENTS, install)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        python = Path(sys.executable)
        notes.append(f"uvicorn defaults from the project venv ({error})")
    argv = [str(python), str(FLOOR_RELAY), str(port), "--", *UPSTREAM]
    return Launch(argv, f"http://127.0.0.1:{port}/mcp", notes=notes)


def prepare_mcpstore(workdir: Path, port: int, install: bool) -> Launch:
    config = workdir / "mcpstore.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "log_level": "WARNING",
                "max_sessions_per_upstream": 256,
                # The 2026-07-28 load is one anonymous principal naming a session per client: 50 for the memory section.
                "max_named_sessions_per_client": 256,
                "mcpServers": {"bench": {"command": UPSTREAM[0], "args": UPSTREAM[1:], "prefix": ""}},
            }
        )
    )
    executable = Path(sys.executable).parent / "mcpstore-proxy"
    argv = [str(executable), "serve", "--config", str(config), "--port", str(port)]
    version = f"mcpstore-proxy {venv_version(Path(sys.executable), 'mcpstore-proxy')}"
    return Launch(argv, f"http://127.0.0.1:{port}/mcp", ready_path="/healthz", version=version)


def prepare_mcpstore_http(workdir: Path, port: int, install: bool) -> Launch:
    """mcpstore-proxy with the echo server as an isolated Streamable HTTP upstream (its own process, SSE responses)."""
    upstream_port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/mcp"
    config = workdir / "mcpstore-http.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "log_level": "WARNING",
                "max_sessions_per_upstream": 256,
                "mcpServers": {"bench": {"url": upstream_url, "prefix": ""}},
            }
        )
    )
    executable = Path(sys.executable).parent / "mcpstore-proxy"
    argv = [str(executable), "serve", "--config", str(config), "--port", str(port)]
    version = f"mcpstore-proxy {venv_version(Path(sys.executable), 'mcpstore-proxy')}"
    upstream_argv = [sys.executable, str(ECHO_SERVER), "http", str(upstream_port)]
    return Launch(
        argv,
        f"http://127.0.0.1:{port}/mcp",
        ready_path="/healthz",
        version=version,
        upstream_argv=upstream_argv,
        upstream_url=upstream_url,
    )


def prepare_mcp_proxy(workdir: Path, port: int, install: bool) -> Launch:
    python = ensure_venv("mcp-proxy", MCP_PROXY_REQUIREMENTS, install)
    executable = python.parent / "mcp-proxy"
    argv = [str(executable), "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING", *UPSTREAM]
    return Launch(argv, f"http://127.0.0.1:{port}/mcp", version=f"mcp-proxy {venv_version(python, 'mcp-proxy')}")


def prepare_fastmcp(workdir: Path, port: int, install: bool) -> Launch:
    python = ensure_venv("fastmcp", FASTMCP_REQUIREMENTS, install)
    launcher = workdir / "fastmcp_proxy.py"
    launcher.write_text(FASTMCP_LAUNCHER)
    argv = [str(python), str(launcher), str(port), *UPSTREAM]
    return Launch(argv, f"http://127.0.0.1:{port}/mcp", version=f"fastmcp {venv_version(python, 'fastmcp')}")


TARGETS = {
    target.name: target
    for target in [
        Target(
            "direct-sse", "direct: the upstream's own SDK server over HTTP, SSE responses", True, prepare_direct(False)
        ),
        Target("direct-json", "direct, JSON responses", True, prepare_direct(True)),
        Target("floor", "floor: bare isolating relay (bench/floor_relay.py)", False, prepare_floor),
        Target("mcp-proxy", "mcp-proxy 0.13 (sparfenyuk)", False, prepare_mcp_proxy),
        Target("fastmcp", "FastMCP 4.1.6 `StatefulProxyClient`", False, prepare_fastmcp),
        Target("mcpstore", "**mcpstore-proxy**", False, prepare_mcpstore),
        Target(
            "mcpstore-modern",
            "**mcpstore-proxy**, 2026-07-28 client (sessionless, one `X-MCPStore-Session` per client)",
            False,
            prepare_mcpstore,
            client_mode="2026-07-28",
        ),
        Target(
            "mcpstore-http",
            "**mcpstore-proxy**, Streamable HTTP upstream (`echo_server.py http`, SSE responses)",
            False,
            prepare_mcpstore_http,
            upstream="http",
        ),
    ]
}
