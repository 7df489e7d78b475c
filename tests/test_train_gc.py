"""lmforge.train keeps Python's cyclic garbage collector off start-up's objects during fit, and only then."""

from __future__ import annotations

import gc
import weakref

from lmforge.train import startup_objects_frozen


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_startup_objects_are_left_out_of_collections_during_fit_and_freed_after():
    before = Node()
    gone_before = weakref.ref(before)
    with startup_objects_frozen():
        assert gc.get_freeze_count() > 1000  # start-up's objects (this test process's): not walked by collections
        del before
        gc.collect()
        assert gone_before() is not None  # frozen: a collection during training does not look at it

        during = Node()  # what training allocates is collected as before
        gone_during = weakref.ref(during)
        del during
        gc.collect()
        assert gone_during() is None
    assert gc.get_freeze_count() == 0  # afterwards collectable again: a multirun's next run frees this one's objects
    gc.collect()
    assert gone_before() is None


def test_an_exception_in_fit_still_unfreezes():
    try:
        with startup_objects_frozen():
            raise RuntimeError("fit failed")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
