"""The serving process's garbage collector (`collector`)."""

from __future__ import annotations

import gc
import weakref

from mcpstore_proxy.collector import YOUNG_THRESHOLD, tuned_collector


def test_tuning_freezes_the_start_up_heap_and_raises_the_young_threshold_until_it_ends() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with tuned_collector():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_cycles_made_after_the_freeze_are_still_collected() -> None:
    class Node:
        partner: Node | None = None

    with tuned_collector():
        first, second = Node(), Node()
        first.partner, second.partner = second, first
        gone = weakref.ref(first)
        del first, second
        gc.collect()
        assert gone() is None
