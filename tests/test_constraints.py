"""constraints.txt pins every package mcpstore-proxy needs at run time, within what pyproject.toml allows, and the
suite runs against exactly those versions: what it tests is what the image ships."""

from __future__ import annotations

import re
from importlib import metadata
from typing import Final

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import PROJECT_ROOT

CONSTRAINTS: Final = PROJECT_ROOT / "constraints.txt"
_PIN: Final = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)$")


def pins() -> dict[str, str]:
    pinned: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        assert match, f"constraints.txt: {line!r} is not 'name==version' (run scripts/lock.sh)"
        pinned[canonicalize_name(match[1])] = match[2]
    return pinned


def run_time_requirements(distribution: str, extras: frozenset[str] = frozenset()) -> list[Requirement]:
    """What `distribution` requires in this environment: its markers evaluated, with `extras` only."""
    wanted: list[Requirement] = []
    for text in metadata.requires(distribution) or []:
        requirement = Requirement(text)
        if requirement.marker is None or any(
            requirement.marker.evaluate({"extra": extra}) for extra in (extras or {""})
        ):
            wanted.append(requirement)
    return wanted


def run_time_closure() -> set[str]:
    """Every distribution that installing mcpstore-proxy without extras brings in here, by canonical name."""
    seen: set[tuple[str, frozenset[str]]] = set()  # a package may be asked for again with extras
    pending = [(requirement, frozenset(requirement.extras)) for requirement in run_time_requirements("mcpstore-proxy")]
    while pending:
        requirement, extras = pending.pop()
        wanted = (canonicalize_name(requirement.name), extras)
        if wanted in seen:
            continue
        seen.add(wanted)
        pending.extend((inner, frozenset(inner.extras)) for inner in run_time_requirements(requirement.name, extras))
    return {name for name, _ in seen}


def test_every_package_needed_at_run_time_is_pinned_and_nothing_else_is() -> None:
    assert set(pins()) == run_time_closure()


def test_each_pin_is_within_what_pyproject_allows() -> None:
    pinned = pins()
    for requirement in run_time_requirements("mcpstore-proxy"):
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"constraints.txt does not pin {requirement.name} (run scripts/lock.sh)"
        assert requirement.specifier.contains(version, prereleases=True), f"{version} vs {requirement}"


def test_the_suite_runs_against_exactly_the_pinned_versions() -> None:
    installed = {name: metadata.version(name) for name in pins()}
    assert installed == pins(), "this environment differs from constraints.txt: run scripts/setup.sh's install again"
