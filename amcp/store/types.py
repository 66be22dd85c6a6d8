"""The seed's CRDT types as views over the LWW map: GMap, LWWRegister, G- and PN-counters.

They add no merge logic of their own, so they converge exactly when the map does:

- :class:`LWWRegister` is one key; the write with the highest (hlc, site) wins.
- :class:`GMap` is a namespace whose keys are never deleted; each value is a register.
- :class:`PNCounter` keeps one row per site (``name/site`` → ``[increments, decrements]``).
  Only the owning site writes its row and its totals only grow, so the newest row of each
  site is also its largest, and the value is the sum over sites: no increment is lost to a
  concurrent one elsewhere, which a single LWW integer would do.

Values are msgpack-encoded with msgspec and decoded to the given type.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from amcp.store.store import Store

T = TypeVar("T")


class LWWRegister(Generic[T]):
    def __init__(self, store: Store, namespace: str, key: str, type_: type[T]) -> None:
        self._store = store
        self.namespace = namespace
        self.key = key
        self._decoder = msgspec.msgpack.Decoder(type_)

    async def set(self, value: T) -> None:
        await self._store.put(self.namespace, self.key, msgspec.msgpack.encode(value))

    async def get(self) -> T | None:
        raw = await self._store.get(self.namespace, self.key)
        return None if raw is None else self._decoder.decode(raw)

    async def clear(self) -> None:
        await self._store.delete(self.namespace, self.key)


class GMap(Generic[T]):
    """A grow-only map: keys are added or overwritten, never removed."""

    def __init__(self, store: Store, namespace: str, type_: type[T]) -> None:
        self._store = store
        self.namespace = namespace
        self._decoder = msgspec.msgpack.Decoder(type_)

    async def put(self, key: str, value: T) -> None:
        await self._store.put(self.namespace, key, msgspec.msgpack.encode(value))

    async def update(self, values: dict[str, T]) -> None:
        await self._store.write(
            (self.namespace, k, msgspec.msgpack.encode(v)) for k, v in values.items()
        )

    async def get(self, key: str) -> T | None:
        raw = await self._store.get(self.namespace, key)
        return None if raw is None else self._decoder.decode(raw)

    async def items(self) -> dict[str, T]:
        raw = await self._store.items(self.namespace)
        return {k: self._decoder.decode(v) for k, v in raw.items()}


_totals = msgspec.msgpack.Decoder(tuple[int, int])


class PNCounter:
    """A counter that any site may increment or decrement; the value is exact after sync."""

    def __init__(self, store: Store, namespace: str, name: str) -> None:
        if "/" in name:
            raise ValueError(f"counter name {name!r} must not contain '/'")
        self._store = store
        self.namespace = namespace
        self.name = name

    async def increment(self, by: int = 1) -> None:
        await self._add(by, 0)

    async def decrement(self, by: int = 1) -> None:
        await self._add(0, by)

    async def _add(self, up: int, down: int) -> None:
        if up < 0 or down < 0:
            raise ValueError("counter steps must be non-negative; use decrement")

        def step(raw: bytes | None) -> bytes:
            p, n = (0, 0) if raw is None else _totals.decode(raw)
            return msgspec.msgpack.encode((p + up, n + down))

        await self._store.update(self.namespace, f"{self.name}/{self._store.site}", step)

    async def value(self) -> int:
        rows = await self._store.items(self.namespace, prefix=f"{self.name}/")
        total = 0
        for raw in rows.values():
            p, n = _totals.decode(raw)
            total += p - n
        return total


class GCounter(PNCounter):
    """A counter that only grows."""

    async def decrement(self, by: int = 1) -> None:
        raise TypeError(f"GCounter {self.name!r} cannot decrement (by {by})")
