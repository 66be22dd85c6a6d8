"""Answers to deterministic requests (temperature 0), kept for identical requests.

The key is the request's exact JSON encoding (messages, system, tools, schema, task data,
limits), so only a byte-identical request is answered from here. Least recently used entries
go first; an entry older than the TTL is not used.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from cloud.llm.types import Request, Response


class AnswerCache:
    def __init__(
        self, entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.entries = entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[bytes, tuple[float, Response]] = OrderedDict()

    def key(self, request: Request) -> bytes | None:
        if not self.entries or not request.deterministic:
            return None
        return msgspec.json.encode(request)

    def get(self, key: bytes) -> Response | None:
        item = self._items.get(key)
        if item is None:
            return None
        stored, response = item
        if self._clock() - stored > self.ttl_s:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return response

    def put(self, key: bytes, response: Response) -> None:
        self._items[key] = (self._clock(), response)
        self._items.move_to_end(key)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
