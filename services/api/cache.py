"""A byte-bounded LRU for encoded responses that cannot go stale.

Keys include the job's `last_event_id`: the recorder writes a batch's metric rows and moves
`last_event_id` in one transaction, so an entry under an unchanged id is still exact. Finished
jobs never change, so every viewer after the first gets their charts from memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class ResponseCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._max = max_bytes
        self._size = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        body = self._items.get(key)
        if body is not None:
            self._items.move_to_end(key)
        return body

    def put(self, key: Hashable, body: bytes) -> None:
        if len(body) > self._max // 4:
            return  # one huge response must not flush everything else
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old)
        self._items[key] = body
        self._size += len(body)
        while self._size > self._max:
            _, evicted = self._items.popitem(last=False)
            self._size -= len(evicted)
