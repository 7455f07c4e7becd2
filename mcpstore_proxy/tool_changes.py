"""What changed between two definitions of one tool, in one line a person can read.

Tool pinning (`pins`) reports a tool whose definition differs from its pin with this line, and the error that
withholds it under `enforce` quotes it. Definitions are in wire form (camelCase: `inputSchema`, `outputSchema`,
`annotations`). Title and description are named when they changed; the input and output schemas are compared
property by property (added, removed, a type that changed, as a reader would name it), with `required` on its
own and any other keyword as "other changes"; annotations show each hint that moved. A change none of these
names is "definition changed".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, cast

__all__ = ["describe_changes"]

_SCHEMA_PARTS: Final = frozenset({"properties", "required"})
"""The parts of a JSON schema that are compared in detail; a change to any other keyword is "other changes"."""


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What differs between two definitions of one tool, in one line, such as "description changed; input
    schema: added 'x', removed 'y', 'z' type string→integer; required changed (+'x'); output schema changed
    ('result' type string→integer); annotations changed (destructiveHint false→true)"."""
    changes = [f"{field} changed" for field in ("title", "description") if old.get(field) != new.get(field)]
    changes += _input_schema_changes(_mapping(old.get("inputSchema")), _mapping(new.get("inputSchema")))
    output = _output_schema_change(old.get("outputSchema"), new.get("outputSchema"))
    if output is not None:
        changes.append(output)
    before, after = _mapping(old.get("annotations")), _mapping(new.get("annotations"))
    if before != after:
        moves = [
            f"{hint} {_shown(before.get(hint))}→{_shown(after.get(hint))}"
            for hint in sorted(before.keys() | after.keys())
            if before.get(hint) != after.get(hint)
        ]
        changes.append(f"annotations changed ({', '.join(moves)})")
    return "; ".join(changes) or "definition changed"


def _input_schema_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    details = _property_changes(old, new)
    if _others(old) != _others(new):
        details.append("other changes")
    changes: list[str] = []
    if details == ["other changes"]:
        changes.append("input schema changed")
    elif details:
        changes.append(f"input schema: {', '.join(details)}")
    required = _required_change(old, new)
    if required is not None:
        changes.append(required)
    return changes


def _output_schema_change(old: Any, new: Any) -> str | None:
    if old == new:
        return None
    if old is None:
        return "output schema added"
    if new is None:
        return "output schema removed"
    before, after = _mapping(old), _mapping(new)
    details = _property_changes(before, after)
    required = _required_change(before, after)
    if required is not None:
        details.append(required)
    if _others(before) != _others(after):
        details.append("other changes")
    return f"output schema changed ({', '.join(details)})" if details else "output schema changed"


def _property_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    before, after = _mapping(old.get("properties")), _mapping(new.get("properties"))
    changes = [f"added {name!r}" for name in after if name not in before]
    changes += [f"removed {name!r}" for name in before if name not in after]
    for name, was in before.items():
        now = after.get(name, was)
        if now != was:
            was_type, now_type = _type_name(was), _type_name(now)
            changes.append(f"{name!r} type {was_type}→{now_type}" if was_type != now_type else f"{name!r} changed")
    return changes


def _required_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    before, after = _names(old.get("required")), _names(new.get("required"))
    if set(before) == set(after):
        return None
    moves = [f"+{name!r}" for name in after if name not in before]
    moves += [f"-{name!r}" for name in before if name not in after]
    return f"required changed ({', '.join(moves)})"


def _type_name(schema: Any) -> str:
    """A property's type as a reader would say it: `string`, `integer|null`, a referenced model's name."""
    properties = _mapping(schema)
    kind = properties.get("type")
    if isinstance(kind, str):
        return kind
    if isinstance(kind, list):
        return "|".join(str(item) for item in cast(list[Any], kind))
    for combinator in ("anyOf", "oneOf"):
        variants = properties.get(combinator)
        if isinstance(variants, list):
            return "|".join(_type_name(variant) for variant in cast(list[Any], variants))
    reference = properties.get("$ref")
    return reference.rsplit("/", 1)[-1] if isinstance(reference, str) else "any"


def _others(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {keyword: value for keyword, value in schema.items() if keyword not in _SCHEMA_PARTS}


def _mapping(value: Any) -> Mapping[str, Any]:
    return cast(Mapping[str, Any], value) if isinstance(value, Mapping) else {}


def _names(value: Any) -> list[str]:
    return [str(name) for name in cast(list[Any], value)] if isinstance(value, list) else []


def _shown(value: Any) -> str:
    return "unset" if value is None else json.dumps(value, ensure_ascii=False)
