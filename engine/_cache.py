"""The one shape-keyed cache: what a plan computes per input shape (geometries, tile plans,
work sizes, planned layers), kept for a bounded number of shapes, least recently used first out.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from ._threads import fork_safe


class ShapeCache:
    """``get(key, make)``: the value for ``key``, made by ``make()`` on a miss. At most
    ``maxsize`` values are kept. Safe to share between threads: a value may be made twice by
    racing threads, and both are equal, so the second simply replaces the first."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        fork_safe(self)

    def get(self, key, make):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                return value
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def values(self) -> list:
        with self._lock:
            return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)
