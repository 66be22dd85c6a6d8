"""Signed policy bundles on the gateway: verified, judged, loaded and swapped into the
running ingest policy (docs/policy-language.md, "Bundles").

:class:`PolicyBundles` is a supervised child. It subscribes to the store's ``policies``
namespace (the cloud's rows arrive there through sync) and, after every change:

1. verifies each row with the cloud's Ed25519 node key, the one the gateway received at
   enrolment (``enrolment.json``): a row that does not decode, names another key or whose
   signature does not verify is refused (``malformed``, ``unknown_key``, ``bad_signature``);
2. keeps the verified bundles for its zone (``[gateway] zone``) or for every zone, and takes
   the one with the highest version: the newest bundle aimed at this gateway decides;
3. refuses it when its version is not above the applied bundle's (``older_version``: a
   replayed or rolled-back row), when it has expired (``expired``), or when its wasm (or
   source) does not load (``invalid_wasm``); the running policy stays, and an older bundle
   is never taken in its place;
4. otherwise loads the agent in a worker thread and swaps it into the
   :class:`~wasm.stage.PolicyStage` between two ingest batches, and records the bundle in
   the local namespace ``gateway.policy``, so a restart runs it again at once (even past its
   expiry: expiry bounds when a bundle may first be applied, not how long it runs) and an
   older one is refused across restarts too.

Each refusal is counted by reason (``cybernetic_policy_bundle_refusals_total{reason}``),
logged (a warning the first time for each reason), and reported to the cloud as a
``policy.bundle.refused`` event; a row is judged once however often it is seen. A gateway that
was never enrolled knows no cloud key: it builds no watcher and runs its ``[policy] file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from amcp import bundles
from amcp.bundles import NAMESPACE, BundleRefusedError
from amcp.crypto.keyring import Keyring
from amcp.crypto.keys import ED25519, KeyEntry, ed25519_key_id, now_ms
from amcp.runtime.supervisor import ChildContext
from amcp.store import Change, Store, StoreError
from amcp.wire.messages import PolicyBundle
from amcp.wire.telemetry import EventRecord
from gateway.enrol import EnrolmentError, EnrolPaths

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from wasm import PolicyAgent, PolicyStage

log = logging.getLogger(__name__)

APPLIED_NAMESPACE = "gateway.policy"
"""Local namespace (no sync rule names it: never sent) holding the applied bundle's row."""
APPLIED_KEY = "applied"
PASS_ALL = 'policy "none" version 0\ndefault allow because "no policy bundle applied yet"\n'  # noqa: S105
"""The policy of a gateway that has no ``[policy] file`` until a bundle arrives."""
POLL_S = 60.0
"""Look at the namespace again at least this often (a missed notification costs no more)."""
_MAX_JUDGED = 1024

Report = Callable[[list[EventRecord]], object]


def cloud_keyring(enrol_dir: str) -> Keyring | None:
    """The cloud's node key as the gateway learnt it at enrolment; None when never enrolled."""
    if not enrol_dir:
        return None
    try:
        state = EnrolPaths(Path(enrol_dir)).load()
    except EnrolmentError:
        return None
    entry = KeyEntry(ed25519_key_id(state.cloud_key), state.cloud, ED25519, state.cloud_key)
    return Keyring([entry])


class PolicyBundles:
    """Applies the cloud's signed bundles to one running :class:`~wasm.stage.PolicyStage`."""

    def __init__(
        self,
        store: Store,
        stage: PolicyStage,
        keyring: Keyring,
        *,
        zone: str,
        zones: Mapping[str, str] | None = None,
        memory_bytes: int = 16 << 20,
        report: Report | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.stage = stage
        self.keyring = keyring
        self.zone = zone
        self.zones = dict(zones or {})
        self.memory_bytes = memory_bytes
        self.report = report
        self.clock = clock
        self.applied: PolicyBundle | None = None
        """The bundle the stage runs (None: the local file, or pass-all)."""
        self.applied_digest = ""
        self.applied_count = 0
        self.refusals: Counter[str] = Counter(dict.fromkeys(bundles.REASONS, 0))
        self.last_refusal: tuple[str, str] | None = None
        """(reason, detail) of the latest refusal, for tests and status."""
        self.swap_ms = 0.0
        """Verify + load + swap time of the latest applied bundle."""
        self._judged: dict[str, str] = {}
        """Digest of every row value already refused → its reason (judged once each)."""
        self._verified: dict[str, PolicyBundle] = {}
        """Digest of every row whose signature verified → its bundle."""
        self._logged: set[str] = set()
        self._dirty = asyncio.Event()
        self._changed = asyncio.Condition()

    # -- running -------------------------------------------------------------------------
    async def run(self, ctx: ChildContext) -> None:
        unsubscribe = None
        try:
            unsubscribe = self.store.subscribe(
                NAMESPACE, self._on_change, loop=asyncio.get_running_loop()
            )
            await self._restore()
            await self.refresh()
            ctx.ready()
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), POLL_S)
                self._dirty.clear()
                try:
                    await self.refresh()
                except StoreError as exc:
                    log.warning("policy bundles: store unreadable", extra={"error": str(exc)})
        finally:
            if unsubscribe is not None:
                unsubscribe()

    def _on_change(self, _changes: list[Change]) -> None:
        self._dirty.set()

    async def _restore(self) -> None:
        """Run the bundle applied before a restart again (no expiry check: it was accepted)."""
        data = await self.store.get(APPLIED_NAMESPACE, APPLIED_KEY)
        if data is None:
            return
        try:
            bundle = bundles.verify(data, self.keyring, self.clock(), expiry=False)
            agent = await asyncio.to_thread(self._load, bundle)
        except BundleRefusedError as exc:
            log.warning(
                "the policy bundle applied before the restart no longer loads; not applied",
                extra={"error": str(exc)},
            )
            return
        self._swap(bundle, data, agent)
        log.info("policy bundle restored", extra={"policy": bundle.name, "version": bundle.version})

    async def refresh(self) -> bool:
        """Judge the namespace's rows now; True when a new bundle was swapped in."""
        rows = await self.store.items(NAMESPACE)
        started = time.perf_counter()
        now = self.clock()
        best: tuple[tuple[int, bool], str, bytes, PolicyBundle] | None = None
        for key, data in rows.items():
            digest = bundles.digest(data)
            bundle = self._verified.get(digest)
            if bundle is None:
                if digest in self._judged:
                    continue  # refused before: counted once
                try:
                    bundle = bundles.verify(data, self.keyring, now, expiry=False)
                except BundleRefusedError as exc:
                    self._refuse(key, data, exc, None)
                    continue
                if len(self._verified) >= _MAX_JUDGED:
                    self._verified.clear()
                self._verified[digest] = bundle
            if not bundles.applies_to(bundle, self.zone):
                continue  # another zone's: not ours to judge
            rank = (bundle.version, bundle.zone != "")  # a tie goes to our zone's own
            if best is None or rank > best[0]:
                best = (rank, key, data, bundle)
        if best is None:
            return False
        _, key, data, bundle = best
        digest = bundles.digest(data)
        if digest == self.applied_digest or digest in self._judged:
            return False  # running already, or refused already: the running policy stays
        running = self.applied.version if self.applied is not None else 0
        try:
            _check_newer(bundle, running)
            bundles.check_expiry(bundle, now)
            agent = await asyncio.to_thread(self._load, bundle)
        except BundleRefusedError as exc:
            self._refuse(key, data, exc, bundle)
            return False
        previous = self.applied
        self._swap(bundle, data, agent)
        self.swap_ms = (time.perf_counter() - started) * 1000
        await self.store.put(APPLIED_NAMESPACE, APPLIED_KEY, data)
        attrs: dict[str, Any] = {
            "policy": bundle.name,
            "version": bundle.version,
            "zone": bundle.zone,
            "key": key,
            "previous": None if previous is None else previous.version,
            "swap_ms": round(self.swap_ms, 2),
        }
        if bundle.cause:
            attrs["causation"] = bundle.cause  # the audit entry's causation (gateway.audit)
        log.info("policy bundle applied", extra=attrs)
        self._emit("policy.bundle.applied", "info", attrs)
        async with self._changed:
            self._changed.notify_all()
        return True

    def _load(self, bundle: PolicyBundle) -> PolicyAgent:
        """The bundle's agent (blocking: compile and instantiate; run in a worker thread)."""
        from wasm import PolicyAgent, PolicyError, compile_policy  # noqa: PLC0415 - wasmtime
        from wasm.sandbox import AgentLimits  # noqa: PLC0415

        limits = AgentLimits(memory_bytes=self.memory_bytes)
        try:
            if bundle.body:
                return PolicyAgent.load(bundle.body, zones=self.zones, limits=limits)
            return PolicyAgent.load(compile_policy(bundle.source), zones=self.zones, limits=limits)
        except PolicyError as exc:
            what = "wasm" if bundle.body else "source"
            raise BundleRefusedError(
                "invalid_wasm", f"{bundle.name} version {bundle.version}: its {what}: {exc}"
            ) from None

    def _swap(self, bundle: PolicyBundle, data: bytes, agent: PolicyAgent) -> None:
        self.stage.swap(agent)  # one reference assignment: between two ingest batches
        self.applied = bundle
        self.applied_digest = bundles.digest(data)
        self.applied_count += 1

    def _refuse(
        self, key: str, data: bytes, exc: BundleRefusedError, bundle: PolicyBundle | None
    ) -> None:
        if len(self._judged) >= _MAX_JUDGED:
            self._judged.clear()  # bounded; at worst a row is counted again
        self._judged[bundles.digest(data)] = exc.reason
        self.refusals[exc.reason] += 1
        self.last_refusal = (exc.reason, exc.detail)
        attrs: dict[str, Any] = {"reason": exc.reason, "detail": exc.detail, "key": key[:200]}
        if bundle is not None:
            attrs |= {"policy": bundle.name, "version": bundle.version, "zone": bundle.zone}
        attrs["running"] = None if self.applied is None else self.applied.version
        level = logging.DEBUG if exc.reason in self._logged else logging.WARNING
        self._logged.add(exc.reason)
        log.log(level, "policy bundle refused; the running policy stays", extra=attrs)
        self._emit("policy.bundle.refused", "warning", attrs)

    def _emit(self, name: str, severity: str, attrs: dict[str, Any]) -> None:
        if self.report is not None:
            self.report([EventRecord(name, self.clock(), "policy", severity, attrs)])

    async def wait_applied(self, version: int) -> None:
        """Until a bundle of at least ``version`` runs (tests and tools)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.applied is not None and self.applied.version >= version
            )

    # -- metrics -------------------------------------------------------------------------
    def register(self, registry: CollectorRegistry) -> None:
        registry.register(_BundleCollector(self))

    def snapshot(self) -> dict[str, Any]:
        applied = self.applied
        return {
            "policy": None if applied is None else applied.name,
            "version": 0 if applied is None else applied.version,
            "zone": None if applied is None else applied.zone,
            "applied": self.applied_count,
            "refusals": dict(self.refusals),
        }


def _check_newer(bundle: PolicyBundle, running: int) -> None:
    if bundle.version <= running:
        raise BundleRefusedError(
            "older_version", f"version {bundle.version} is not newer than the running {running}"
        )


class _BundleCollector(Collector):
    def __init__(self, bundles_: PolicyBundles) -> None:
        self._b = bundles_

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        b = self._b
        refused = CounterMetricFamily(
            "cybernetic_policy_bundle_refusals",
            "Signed policy bundles refused, by reason (the running policy stayed)",
            labels=["reason"],
        )
        for reason, n in sorted(b.refusals.items()):
            refused.add_metric([reason], n)
        yield refused
        yield CounterMetricFamily(
            "cybernetic_policy_bundle_applied",
            "Signed policy bundles swapped into the ingest policy",
            value=b.applied_count,
        )
        yield GaugeMetricFamily(
            "cybernetic_policy_bundle_version",
            "Version of the applied policy bundle (0: none, the local file or pass-all runs)",
            value=0 if b.applied is None else b.applied.version,
        )


def pass_all_stage(on_fault: Literal["keep", "drop"], report: Report | None) -> PolicyStage:
    """A stage that keeps every reading until a bundle is applied (blocking: compiles)."""
    from wasm import PolicyAgent, PolicyStage, compile_policy  # noqa: PLC0415 - wasmtime

    return PolicyStage(PolicyAgent.load(compile_policy(PASS_ALL)), on_fault, report=report)


def build(
    config: GatewayConfig,
    store: Store,
    stage: PolicyStage | None,
    *,
    report: Report | None,
    registry: CollectorRegistry,
) -> PolicyBundles | None:
    """The watcher of an enrolled gateway (with a pass-all stage when it has no ``[policy]``:
    the ingest filters are fixed at start), None for a gateway that was never enrolled."""
    keyring = cloud_keyring(config.uplink.enrol_dir)
    if keyring is None:
        if config.uplink.enrol_dir:
            log.info("policy bundles off: this gateway was never enrolled (no cloud key)")
        return None
    policy = config.policy
    if stage is None:
        stage = pass_all_stage(policy.on_fault if policy else "keep", report)
    watcher = PolicyBundles(
        store,
        stage,
        keyring,
        zone=config.gateway.zone,
        zones=policy.zones if policy else None,
        memory_bytes=policy.memory_bytes if policy else 16 << 20,
        report=report,
    )
    watcher.register(registry)
    return watcher
