"""The gateway's capability registry: rows in the CRDT store, one per capability.

Rows live in namespace ``s1.capabilities`` under ``{gateway}/{name}`` so the registries of many
gateways can share one synced map without colliding. The registry also keeps the version of
the announcement that describes it (namespace ``s1.meta``): it moves forward whenever the set
of capabilities changes, to at least the current wall-clock milliseconds, so a gateway whose
state was wiped still announces a version newer than any it announced before.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

import msgspec

from amcp.store import Store
from amcp.wire.messages import CapabilityAnnouncement, CapabilitySpec
from gateway.s1.settings import CapabilityConfig

NAMESPACE = "s1.capabilities"
META_NAMESPACE = "s1.meta"


class CapabilityRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """A capability with what the dispatcher needs to carry it out."""

    spec: CapabilitySpec
    device: str
    action: str
    unit: str = ""
    timeout_s: float | None = None
    standby: list[str] = msgspec.field(default_factory=list)


class _AnnounceState(msgspec.Struct, frozen=True):
    version: int
    digest: str


_RECORD = msgspec.msgpack.Decoder(CapabilityRecord)
_STATE = msgspec.msgpack.Decoder(_AnnounceState)
_ENC = msgspec.msgpack.Encoder()


def record_from_config(cap: CapabilityConfig) -> CapabilityRecord:
    spec = CapabilitySpec(
        name=cap.name,
        description=cap.description,
        input_schema=cap.input_schema,
        output_schema=cap.output_schema,
        zone=cap.zone,
        cost=cap.cost,
        owner=f"device:{cap.device}",
    )
    return CapabilityRecord(
        spec, cap.device, cap.action or cap.name, cap.unit, cap.timeout, list(cap.standby)
    )


def carried_by(record: CapabilityRecord, device: str, standby: list[str]) -> CapabilityRecord:
    """``record`` carried out by ``device`` from now on, with ``standby`` behind it."""
    spec = msgspec.structs.replace(record.spec, owner=f"device:{device}")
    return msgspec.structs.replace(record, spec=spec, device=device, standby=standby)


class CapabilityRegistry:
    def __init__(self, store: Store, gateway: str, *, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.gateway = gateway
        self._now = now

    def _key(self, name: str) -> str:
        return f"{self.gateway}/{name}"

    async def put(self, record: CapabilityRecord) -> None:
        await self.store.put(NAMESPACE, self._key(record.spec.name), _ENC.encode(record))

    async def remove(self, name: str) -> None:
        await self.store.delete(NAMESPACE, self._key(name))

    async def get(self, name: str) -> CapabilityRecord | None:
        raw = await self.store.get(NAMESPACE, self._key(name))
        return None if raw is None else _RECORD.decode(raw)

    async def records(self) -> dict[str, CapabilityRecord]:
        rows = await self.store.items(NAMESPACE, prefix=f"{self.gateway}/")
        out = {}
        for raw in rows.values():
            record = _RECORD.decode(raw)
            out[record.spec.name] = record
        return out

    async def assign(self, name: str, device: str, standby: list[str]) -> bool:
        """Let ``device`` carry out capability ``name`` (a zombie's work moving to a standby);
        False if the capability is gone."""
        record = await self.get(name)
        if record is None:
            return False
        await self.put(carried_by(record, device, standby))
        return True

    async def sync_config(self, capabilities: Sequence[CapabilityConfig]) -> bool:
        """Make the registry hold exactly the configured capabilities; True if it changed."""
        wanted = {c.name: _ENC.encode(record_from_config(c)) for c in capabilities}
        current = await self.store.items(NAMESPACE, prefix=f"{self.gateway}/")
        current = {k.partition("/")[2]: v for k, v in current.items()}
        writes: list[tuple[str, str, bytes | None]] = [
            (NAMESPACE, self._key(name), value)
            for name, value in wanted.items()
            if current.get(name) != value
        ]
        writes += [(NAMESPACE, self._key(name), None) for name in current if name not in wanted]
        if writes:
            await self.store.write(writes)
        return bool(writes)

    async def announcement(self) -> CapabilityAnnouncement:
        """The announcement of the current set, with a version that moved if the set did."""
        records = await self.records()
        specs = [records[name].spec for name in sorted(records)]
        digest = hashlib.sha256(_ENC.encode(specs)).hexdigest()
        now_ms = int(self._now() * 1000)
        chosen: list[int] = []

        def bump(raw: bytes | None) -> bytes:
            old = None if raw is None else _STATE.decode(raw)
            if old is not None and old.digest == digest:
                chosen.append(old.version)
                return raw  # type: ignore[return-value]
            version = max(now_ms, old.version + 1 if old else 1)
            chosen.append(version)
            return _ENC.encode(_AnnounceState(version, digest))

        await self.store.update(META_NAMESPACE, f"{self.gateway}/announce", bump)
        return CapabilityAnnouncement(
            node=self.gateway,
            version=chosen[0],
            capabilities=[s.name for s in specs],
            specs=specs,
        )
