"""Run the Python examples of a Markdown page, in order, in one namespace, checking what they print.

    python tests/doc_examples.py docs/sdk.md

A `print(...)` line followed by `# → text` (on the same line, or alone on the next line) must print exactly
`text`; a note in parentheses after the text, `# → True (why)`, is not part of it. Tracebacks point at the
page's own line numbers. Exit status 0 when every block ran and every printed line matched.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

_FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
_PRINT = re.compile(r"^(?P<indent>\s*)print\((?P<arguments>.*?)\)\s*(?:# → (?P<expected>.*))?$")
_EXPECTED_ALONE = re.compile(r"^\s*# → (?P<expected>.*)$")
_NOTE = re.compile(r" \([^()]*\)$")


def python_blocks(page: str) -> list[tuple[int, str]]:
    """Each ```python block as (line number of its first line, source)."""
    return [(page.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in _FENCE.finditer(page)]


def checked(source: str) -> str:
    """`source` with each annotated `print(...)` turned into a call that checks its output."""
    lines = source.split("\n")
    for index, line in enumerate(lines):
        found = _PRINT.match(line)
        if found is None:
            continue
        expected = found.group("expected")
        if expected is None and index + 1 < len(lines):
            alone = _EXPECTED_ALONE.match(lines[index + 1])
            expected = alone.group("expected") if alone is not None else None
        if expected is not None:
            expected = _NOTE.sub("", expected.rstrip())
            lines[index] = f"{found.group('indent')}_expect_printed({expected!r}, {found.group('arguments')})"
    return "\n".join(lines)


def _expect_printed(expected: str, *values: Any) -> None:
    printed = " ".join(str(value) for value in values)
    print(printed)
    if printed != expected:
        raise AssertionError(f"printed {printed!r}, but the page says {expected!r}")


def main(path: str) -> int:
    page = Path(path).read_text()
    namespace: dict[str, Any] = {"__name__": "__main__", "_expect_printed": _expect_printed}
    blocks = python_blocks(page)
    if not blocks:
        print(f"{path}: no ```python blocks", file=sys.stderr)
        return 1
    for first_line, source in blocks:
        print(f"--- {path}:{first_line}", flush=True)
        # Blank lines ahead of the block keep tracebacks on the page's line numbers.
        exec(compile("\n" * (first_line - 1) + checked(source), path, "exec"), namespace)
    print(f"--- {len(blocks)} blocks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
