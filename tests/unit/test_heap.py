"""process.heap: what the collector is kept off, and that a thaw gives it back."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from credfresh.process.heap import FrozenHeap


class Node:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settled_moves_the_heap_out_of_the_collectors_sight() -> None:
    FrozenHeap().settled()
    assert gc.get_freeze_count() > 0


def test_a_frozen_cycle_is_freed_only_after_a_thaw() -> None:
    """Why the engine thaws before dropping its sources: a frozen cycle outlives collections."""
    node = Node()
    alive = weakref.ref(node)
    heap = FrozenHeap()
    heap.settled()
    del node
    gc.collect()
    assert alive() is not None
    heap.dropping()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None


def test_settled_with_collect_frees_the_garbage_first() -> None:
    node = Node()
    alive = weakref.ref(node)
    del node
    FrozenHeap().settled(collect=True)
    assert alive() is None


def test_what_was_dropped_after_a_thaw_is_not_frozen_again() -> None:
    """Sources replaced: the thaw lets the old ones go, and settling the new ones collects
    them first instead of freezing them back."""
    node = Node()
    alive = weakref.ref(node)
    heap = FrozenHeap()
    heap.settled()
    heap.dropping()
    del node
    heap.settled()
    assert alive() is None
