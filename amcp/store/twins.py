"""Device twins: the desired and reported state of each device, and what is still to do.

As in device shadows (AWS IoT, Azure twins): the cloud writes *desired* fields, the gateway
writes *reported* fields, and the *delta* is every desired field whose reported value
differs — the work the device still has to do. Each top-level field is its own LWW row
(``device/field``), so the cloud changing one field and a gateway reporting another never
overwrite each other. Setting a field to ``None`` deletes it. Nested objects are compared
recursively for the delta but stored whole per top-level field.
"""

from __future__ import annotations

from typing import Any

import msgspec

from amcp.store.store import Store

DESIRED = "twin.desired"
REPORTED = "twin.reported"


class Twin(msgspec.Struct, frozen=True):
    device: str
    desired: dict[str, Any]
    reported: dict[str, Any]
    delta: dict[str, Any]


def compute_delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    """Desired fields whose reported value differs; nested objects yield nested deltas."""
    delta: dict[str, Any] = {}
    for field, want in desired.items():
        have = reported.get(field)
        if isinstance(want, dict) and isinstance(have, dict):
            inner = compute_delta(want, have)
            if inner:
                delta[field] = inner
        elif want != have or field not in reported:
            delta[field] = want
    return delta


class Twins:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def set_desired(self, device: str, patch: dict[str, Any]) -> None:
        await self._patch(DESIRED, device, patch)

    async def report(self, device: str, patch: dict[str, Any]) -> None:
        await self._patch(REPORTED, device, patch)

    async def desired(self, device: str) -> dict[str, Any]:
        return await self._doc(DESIRED, device)

    async def reported(self, device: str) -> dict[str, Any]:
        return await self._doc(REPORTED, device)

    async def get(self, device: str) -> Twin:
        desired = await self.desired(device)
        reported = await self.reported(device)
        return Twin(device, desired, reported, compute_delta(desired, reported))

    async def _patch(self, namespace: str, device: str, patch: dict[str, Any]) -> None:
        _check_device(device)
        await self._store.write(
            (namespace, f"{device}/{field}", None if v is None else msgspec.msgpack.encode(v))
            for field, v in patch.items()
        )

    async def _doc(self, namespace: str, device: str) -> dict[str, Any]:
        _check_device(device)
        prefix = f"{device}/"
        rows = await self._store.items(namespace, prefix=prefix)
        return {k[len(prefix) :]: msgspec.msgpack.decode(v) for k, v in rows.items()}


def _check_device(device: str) -> None:
    if not device or "/" in device:
        raise ValueError(f"device id {device!r} must be non-empty and contain no '/'")
