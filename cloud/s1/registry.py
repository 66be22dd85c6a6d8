"""The cloud's capability registry: each gateway's latest announcement, in the CRDT store.

One row per gateway (namespace ``s1.announcements``) holding its announcement. An
announcement replaces the stored one only if its version is higher, checked and written in one
transaction on the store's writer thread, so an older announcement never replaces a newer one,
whatever order they arrive in (a stale retained copy after a fresh live one, a reconnect).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from amcp.store import Store
from amcp.wire.messages import CapabilityAnnouncement, CapabilitySpec

NAMESPACE = "s1.announcements"

_DEC = msgspec.msgpack.Decoder(CapabilityAnnouncement)
_ENC = msgspec.msgpack.Encoder()


@dataclass(frozen=True)
class Owner:
    """A gateway that offers a capability, with the spec it announced."""

    gateway: str
    spec: CapabilitySpec
    version: int


class CloudCapabilityRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def apply(self, announcement: CapabilityAnnouncement) -> bool:
        """Store ``announcement`` if it is newer than the one held; True if it was."""
        held = await self.announcement(announcement.node)
        if held is not None and held.version >= announcement.version:
            return False  # the common case (a re-sent announcement): no write at all
        applied: list[bool] = []

        def newer(raw: bytes | None) -> bytes | None:
            if raw is not None and _DEC.decode(raw).version >= announcement.version:
                applied.append(False)
                return raw
            applied.append(True)
            return _ENC.encode(announcement)

        await self.store.update(NAMESPACE, announcement.node, newer)
        return applied[0]

    async def announcement(self, gateway: str) -> CapabilityAnnouncement | None:
        raw = await self.store.get(NAMESPACE, gateway)
        return None if raw is None else _DEC.decode(raw)

    async def announcements(self) -> dict[str, CapabilityAnnouncement]:
        return {gw: _DEC.decode(raw) for gw, raw in (await self.store.items(NAMESPACE)).items()}

    async def owners(self, capability: str) -> list[Owner]:
        """Gateways offering ``capability``, cheapest first (ties by gateway id)."""
        found = []
        for gateway, ann in (await self.announcements()).items():
            specs = {s.name: s for s in ann.specs}
            if capability in specs:
                found.append(Owner(gateway, specs[capability], ann.version))
            elif capability in ann.capabilities:  # an older gateway: names only
                found.append(Owner(gateway, CapabilitySpec(capability), ann.version))
        return sorted(found, key=lambda o: (o.spec.cost, o.gateway))

    async def capabilities(self) -> dict[str, list[Owner]]:
        out: dict[str, list[Owner]] = {}
        for gateway, ann in (await self.announcements()).items():
            specs = {s.name: s for s in ann.specs}
            for name in ann.capabilities:
                out.setdefault(name, []).append(
                    Owner(gateway, specs.get(name, CapabilitySpec(name)), ann.version)
                )
        return out
