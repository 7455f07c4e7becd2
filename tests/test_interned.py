"""Equal values kept once (mcpstore_proxy/interned.py): the first model of a wire form is the one every later equal
model gives way to; different ones stay apart; the table keeps at most its bound, dropping the oldest."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mcpstore_proxy.interned import Interned


class _Hello(BaseModel):
    name: str
    protocol_version: str = Field(default="1", alias="protocolVersion")


def test_a_later_equal_model_gives_way_to_the_first() -> None:
    interned = Interned[_Hello](4)
    first, later = _Hello(name="a"), _Hello(name="a")

    assert interned.get(first) is first
    assert interned.get(later) is first


def test_models_with_different_wire_forms_stay_apart() -> None:
    interned = Interned[_Hello](4)
    one, two = _Hello(name="a"), _Hello(name="a", protocolVersion="2")

    assert interned.get(one) is one
    assert interned.get(two) is two
    assert len(interned) == 2


def test_past_its_bound_it_lets_the_oldest_go() -> None:
    interned = Interned[_Hello](2)
    interned.get(_Hello(name="0"))
    interned.get(_Hello(name="1"))

    interned.get(_Hello(name="2"))

    assert len(interned) == 2
    newer = _Hello(name="0")
    assert interned.get(newer) is newer  # "0" was let go, so the newer copy is kept now
