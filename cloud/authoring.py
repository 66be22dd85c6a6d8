"""Fleet authoring: limits, desired twin values, patterns, zone membership and signed policy
bundles, written in the cloud's CRDT store for sync to carry down, and what each gateway has
acknowledged of them.

Everything here is a typed call on :class:`Authoring` (the command line reaches it through
the cloud's control socket, ``cloud.control``; the API issue will expose the same calls).
Each value is checked before anything is written (:class:`~amcp.fleet.RowError` names the
bad field), and each write returns a :class:`Written` receipt: the row and the version of
the cloud's store that holds it. :meth:`Authoring.applied` turns a receipt into "applied on
47 of 50": the gateways the row is for, and which of them acknowledged a version at least as
new through sync (``peers.acked``, moved only after the gateway committed our rows).

Rows and targeting (formats in :mod:`amcp.fleet`; docs/s2.md, "Limits from the cloud"):

- ``limits`` ``<target>/<scope>/<name>``: sync sends every row to every gateway; a gateway
  applies the rows whose target includes it (``all``, ``zone/<its zone>``, ``gw/<its id>``).
- ``zones`` ``<gateway>``: that gateway's zone. Zone targets count as members the gateways
  with a ``zones`` row naming the zone (a zone set only in a gateway's own configuration is
  not known here).
- ``twin.desired`` ``<device>/<field>`` (``amcp.store.twins``): a device's desired fields are
  keyed by the device and reach every gateway; the target given says whose acknowledgement
  counts (the gateway, or the zone, serving the device).
- ``pattern.fleet`` ``<target>/<rule id>``: a rule document (docs/rules.md, "Patterns from
  the cloud"); a gateway runs the most specific row of each id meant for it.
- ``policies`` / ``policies.history``: signed bundles (``cybernetic policy push``), written
  whole by :meth:`Authoring.write_policies` only if the ``policies`` rows are still those the
  signer read (docs/policy-language.md, "Bundles").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from amcp import bundles
from amcp.fleet import (
    FLEET_PATTERNS,
    LIMITS,
    ZONES,
    LimitValue,
    RowError,
    Target,
    check_name,
    check_rule,
    decode_limit,
    decode_zone,
    desired_key,
    encode_desired,
    encode_limit,
    encode_zone,
    limit_key,
    limit_value,
    parse_limit_key,
    parse_pattern_key,
    pattern_key,
)
from amcp.store import LWWStore, Store
from amcp.store.twins import DESIRED
from cloud.audit_trail import CloudTrail

__all__ = [
    "DESIRED",
    "FLEET_PATTERNS",
    "POLICY_NAMESPACES",
    "Applied",
    "Authoring",
    "Mark",
    "PolicyConflictError",
    "RowError",
    "Target",
    "Written",
]

POLICY_NAMESPACES = (bundles.NAMESPACE, bundles.HISTORY_NAMESPACE)


class PolicyConflictError(Exception):
    """The ``policies`` rows changed since the writer read them: nothing was written."""


class Written(msgspec.Struct, frozen=True):
    """A row written (``removed``: a delete) at ``version`` of the cloud's store, for
    ``target``'s gateways. ``existed`` is False for a delete of a row that was not there."""

    namespace: str
    key: str
    target: str
    version: int
    removed: bool = False
    existed: bool = True


class Applied(msgspec.Struct, frozen=True):
    """Which gateways a written row is for, and which have acknowledged it."""

    namespace: str
    key: str
    version: int
    gateways: list[str]
    acknowledged: list[str]
    pending: list[str]

    @property
    def done(self) -> bool:
        return not self.pending

    def summary(self) -> str:
        return f"applied on {len(self.acknowledged)} of {len(self.gateways)}"


class Mark(msgspec.Struct, frozen=True):
    """One gateway's sync marks as the cloud keeps them."""

    gateway: str
    acked: int
    """The newest of the cloud's versions the gateway committed."""
    received: int
    """The newest of the gateway's versions the cloud committed."""
    last_seen_ms: int
    zone: str | None
    """Its zone from the ``zones`` rows (None: no row)."""


def _limit_target(target: Target | str) -> Target:
    return target if isinstance(target, Target) else Target.parse(target)


def _split_key(key: str) -> tuple[str, str]:
    scope, sep, name = key.partition("/")
    if not sep:
        raise RowError("key", f"{key!r}: give <scope>/<name>, e.g. device/flood")
    return scope, name


class Authoring:
    def __init__(
        self,
        store: Store,
        *,
        known_gateways: Callable[[], Iterable[str]] = tuple,
        trail: CloudTrail | None = None,
    ) -> None:
        """``store`` is the cloud's CRDT store (open while calls are made); ``known_gateways``
        lists the gateways the cloud knows besides its sync peers (its link secrets);
        ``trail`` records every write in the cloud's audit chain (cloud.audit_trail)."""
        self.store = store
        self.known_gateways = known_gateways
        self.trail = trail

    # -- writes -----------------------------------------------------------------------------
    async def _write(
        self, namespace: str, key: str, value: bytes | None, target: Target
    ) -> Written:
        def write(core: LWWStore) -> Written:
            existed = core.get(namespace, key) is not None
            if value is None and not existed:
                return Written(
                    namespace, key, str(target), core.version, removed=True, existed=False
                )
            core.write([(namespace, key, value)])
            return Written(
                namespace, key, str(target), core.version, removed=value is None, existed=existed
            )

        written = await self.store.call(write)
        if self.trail is not None and not (written.removed and not written.existed):
            payload = {"target": str(target), "version": written.version}
            payload["value"] = None if value is None else _printable(value)
            kind = f"fleet.{namespace}.{'removed' if value is None else 'set'}"
            await self.trail.append(kind, key, payload)
        return written

    async def set_limit(
        self, target: Target | str, key: str, value: LimitValue | Mapping[str, Any]
    ) -> Written:
        """``key`` is ``<scope>/<name>`` (``device/flood``, ``capability/valve.open``,
        ``principal/alice``); ``value`` a :class:`LimitValue` or ``{"rate": .., "burst": ..}``."""
        where = _limit_target(target)
        parsed = limit_key(where, *_split_key(key))
        if not isinstance(value, LimitValue):
            extra = set(value) - {"rate", "burst"}
            if extra:
                raise RowError(min(extra), "not a limit field (rate, burst)")
            if "rate" not in value:
                raise RowError("rate", "required")
            value = limit_value(value["rate"], value.get("burst", 1))
        return await self._write(LIMITS, parsed.key, encode_limit(value), where)

    async def remove_limit(self, target: Target | str, key: str) -> Written:
        where = _limit_target(target)
        parsed = limit_key(where, *_split_key(key))
        return await self._write(LIMITS, parsed.key, None, where)

    async def set_desired(
        self, target: Target | str, device: str, field: str, value: Any
    ) -> Written:
        row = desired_key(device, field)
        return await self._write(DESIRED, row, encode_desired(value), _limit_target(target))

    async def remove_desired(self, target: Target | str, device: str, field: str) -> Written:
        return await self._write(DESIRED, desired_key(device, field), None, _limit_target(target))

    async def set_zone(self, gateway: str, zone: str) -> Written:
        check_name("gateway", gateway)
        return await self._write(ZONES, gateway, encode_zone(zone), Target.gateway(gateway))

    async def remove_zone(self, gateway: str) -> Written:
        check_name("gateway", gateway)
        return await self._write(ZONES, gateway, None, Target.gateway(gateway))

    async def set_pattern(self, target: Target | str, rule: str, document: object) -> Written:
        """``document`` is the rule's JSON document (a mapping, or its JSON bytes), checked
        with :func:`amcp.fleet.check_rule` before anything is written."""
        where = _limit_target(target)
        parsed = pattern_key(where, rule)
        if isinstance(document, bytes | bytearray | memoryview):
            try:
                document = msgspec.json.decode(bytes(document))
            except msgspec.DecodeError as exc:
                raise RowError("rule", f"not JSON: {exc}") from None
        return await self._write(FLEET_PATTERNS, parsed.key, check_rule(document), where)

    async def remove_pattern(self, target: Target | str, rule: str) -> Written:
        where = _limit_target(target)
        return await self._write(FLEET_PATTERNS, pattern_key(where, rule).key, None, where)

    async def write_policies(
        self, rows: Iterable[tuple[str, str, bytes | None]], expect: str
    ) -> int:
        """Write signed bundle rows (``policies`` / ``policies.history`` only; each value must
        decode as a signed bundle, None deletes) in one transaction, only if the ``policies``
        namespace still has :func:`amcp.bundles.rows_digest` ``expect``; raises
        :class:`PolicyConflictError` when it changed, RowError for a bad row. The cloud does
        not judge signatures: the gateways do."""
        checked = [_policy_row(ns, key, value) for ns, key, value in rows]
        if not checked:
            return 0

        def write_if_unchanged(core: LWWStore) -> int:
            if bundles.rows_digest(core.items(bundles.NAMESPACE)) != expect:
                raise PolicyConflictError
            core.write(checked)
            return len(checked)

        count = await self.store.call(write_if_unchanged)
        if self.trail is not None:
            await self.trail.append_many(
                [_bundle_entry(key, value) for ns, key, value in checked if ns == bundles.NAMESPACE]
            )
        return count

    # -- reads ------------------------------------------------------------------------------
    async def patterns(self, target: Target | str | None = None) -> dict[str, Any]:
        """The ``pattern.fleet`` rows (of one target, or all) as JSON documents, by key; rows
        that do not decode are left out."""
        prefix = "" if target is None else _limit_target(target).prefix
        out: dict[str, Any] = {}
        for key, raw in (await self.store.items(FLEET_PATTERNS, prefix)).items():
            try:
                parse_pattern_key(key)
                out[key] = msgspec.json.decode(raw)
            except (RowError, msgspec.DecodeError):
                continue
        return out

    async def policy_rows(self) -> dict[str, dict[str, bytes]]:
        """Every row of ``policies`` and ``policies.history``, by namespace and key."""
        return {ns: await self.store.items(ns) for ns in POLICY_NAMESPACES}

    async def limits(self, target: Target | str | None = None) -> dict[str, LimitValue]:
        """The ``limits`` rows (of one target, or all), by key; rows that do not decode
        (written by something other than this module) are left out."""
        prefix = "" if target is None else _limit_target(target).prefix
        out: dict[str, LimitValue] = {}
        for key, raw in (await self.store.items(LIMITS, prefix)).items():
            try:
                parse_limit_key(key)
                out[key] = decode_limit(raw)
            except RowError:
                continue
        return out

    async def zones(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for gateway, raw in (await self.store.items(ZONES)).items():
            try:
                out[gateway] = decode_zone(raw).zone
            except RowError:
                continue
        return out

    async def gateways(self, target: Target | str) -> list[str]:
        """The gateways a target names, as far as the cloud knows them."""
        where = _limit_target(target)
        if where.kind == "gateway":
            return [where.name]
        if where.kind == "zone":
            return sorted(g for g, z in (await self.zones()).items() if z == where.name)
        peers = await self.store.call(lambda core: [p.peer for p in core.peers()])
        return sorted({*peers, *self.known_gateways()})

    async def marks(self) -> list[Mark]:
        zones = await self.zones()
        peers = await self.store.call(lambda core: core.peers())
        found = {p.peer: p for p in peers}
        out = [Mark(p.peer, p.acked, p.received, p.last_seen_ms, zones.get(p.peer)) for p in peers]
        out += [
            Mark(g, 0, 0, 0, zones.get(g)) for g in sorted(set(self.known_gateways()) - set(found))
        ]
        return sorted(out, key=lambda m: m.gateway)

    async def version(self) -> int:
        return await self.store.version()

    async def applied(self, change: Written) -> Applied:
        """Which of the change's gateways acknowledged a version at least as new as it."""
        gateways = await self.gateways(change.target)
        acked = {m.gateway: m.acked for m in await self.marks()}
        done = [g for g in gateways if acked.get(g, 0) >= change.version]
        pending = [g for g in gateways if acked.get(g, 0) < change.version]
        return Applied(change.namespace, change.key, change.version, gateways, done, pending)

    async def receipt(
        self, namespace: str, key: str, target: Target | str | None = None
    ) -> Written:
        """The receipt of a row already in the store (its current version), for
        :meth:`applied`; ``target`` defaults to the one in a ``limits`` key, the gateway of a
        ``zones`` key, the one in a ``pattern.fleet`` key, else the whole fleet. Raises
        KeyError when the store has no such row."""

        def version(core: LWWStore) -> tuple[int, bool] | None:
            row = core.connection.execute(
                "SELECT version, value IS NULL FROM map WHERE ns=? AND key=?", (namespace, key)
            ).fetchone()
            return None if row is None else (int(row[0]), bool(row[1]))

        found = await self.store.call(version)
        if found is None:
            raise KeyError(f"{namespace} {key}")
        if target is not None:
            where = _limit_target(target)
        elif namespace == LIMITS:
            where = parse_limit_key(key).target
        elif namespace == ZONES:
            where = Target.gateway(key)
        elif namespace == FLEET_PATTERNS:
            where = parse_pattern_key(key).target
        else:
            where = Target.all()
        return Written(namespace, key, str(where), found[0], removed=found[1])


def _policy_row(namespace: str, key: str, value: bytes | None) -> tuple[str, str, bytes | None]:
    if namespace not in POLICY_NAMESPACES:
        raise RowError("namespace", f"{namespace!r} is not one of {', '.join(POLICY_NAMESPACES)}")
    if not key:
        raise RowError("key", "empty")
    if value is not None:
        try:
            bundles.decode(value)  # a signed bundle's shape, or refused
        except bundles.BundleRefusedError as exc:
            raise RowError("value", f"{key}: not a signed bundle: {exc.detail}") from None
    return namespace, key, value


def _printable(value: bytes) -> str:
    """A row's value for the audit payload: its text when it is UTF-8 (JSON rows), else hex."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.hex()


def _bundle_entry(key: str, value: bytes | None) -> tuple[str, str, dict[str, Any], str]:
    """The ``policy.pushed`` (or ``policy.removed``) entry of one ``policies`` row."""
    if value is None:
        return ("policy.removed", key, {}, "")
    signed, body = bundles.decode(value)  # checked already by _policy_row
    payload = {
        "name": body.name,
        "version": body.version,
        "zone": body.zone,
        "key_id": signed.key_id,
        "expires_ms": body.expires_ms,
        "digest": hashlib.sha256(signed.body).hexdigest(),
    }
    return ("policy.pushed", key, payload, body.cause)
