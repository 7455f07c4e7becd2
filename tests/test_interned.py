"""Equal values kept once (mcpstore_proxy/interned.py): the first value for a key is the one every later equal
value gives way to; different keys stay apart; the table keeps at most its bound, dropping the oldest."""

from __future__ import annotations

from mcpstore_proxy.interned import Interned


def test_a_later_value_for_a_key_gives_way_to_the_first() -> None:
    interned = Interned[list[int]](4)
    first, later = [1], [1]

    assert interned.get("[1]", first) is first
    assert interned.get("[1]", later) is first


def test_values_under_different_keys_stay_apart() -> None:
    interned = Interned[list[int]](4)
    one, two = [1], [2]

    assert interned.get("[1]", one) is one
    assert interned.get("[2]", two) is two
    assert len(interned) == 2


def test_past_its_bound_it_lets_the_oldest_go() -> None:
    interned = Interned[list[int]](2)
    oldest = [0]
    interned.get("0", oldest)
    interned.get("1", [1])

    interned.get("2", [2])

    assert len(interned) == 2
    newer = [0]
    assert interned.get("0", newer) is newer  # "0" was let go, so the newer copy is kept now
