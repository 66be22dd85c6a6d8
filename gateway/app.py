"""The gateway daemon: its parts wired into one supervision tree.

Tree (docs/architecture.md, "Supervision")::

    gateway (rest_for_one: the durable resources, then the workers that use them)
    ├── outbox      opens the SQLite outbox; expires old rows; fails if its database fails
    ├── urgent      the urgent lane (algedonic signals, alerts), sent ahead of the outbox
    ├── state       the CRDT store (amcp.store) shared by S1, rules and sync
    └── workers (one_for_one: each restarts alone)
        ├── events      the one writer of gateway events (S2, rules, policy flags) → outbox
        ├── twins       each device's latest values → its reported twin (synced to the cloud)
        ├── s2          load signals → adaptive limits, zombies, leases; S2 events → outbox
        ├── limits      the store's limits rows (from the cloud) → the S2 rate gate, live
        ├── rules       GoldRush patterns from config, files and the store; actions
        ├── control     the CLI's socket for changing rules on the running gateway
        ├── policy      the cloud's signed policy bundles → the ingest policy (when enrolled)
        ├── uplink      outbox → cloud broker, deletes on the cloud's ack
        ├── heartbeat   a signed heartbeat to the cloud's fleet table every few seconds
        ├── sync        CRDT deltas both ways with the cloud (amcp.sync)
        ├── ingest      local broker → filters → outbox → observers, ack after commit
        ├── s1          capabilities, intent dispatch, child units (gateway.s1)
        ├── desired     twin.desired → device commands through S1 until the report matches
        └── renewer     certificate and link-key renewal (when enrolled)

The outbox starts first and stops last, so nothing is written to a closed database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from amcp.crypto.keys import Signer
from amcp.crypto.keystore import KeyStore
from amcp.link import GatewayLink, read_secret
from amcp.runtime.config import load
from amcp.runtime.logs import set_level
from amcp.runtime.metrics import MetricsServer
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.service import Service
from amcp.runtime.session import Session, SessionMetrics, Transport
from amcp.runtime.statemarker import write_marker
from amcp.runtime.supervisor import ChildContext, ChildSpec, Strategy, Supervisor, holding
from amcp.store import Store
from amcp.sync import GatewaySync
from amcp.wire.telemetry import EventRecord
from gateway.audit import AuditChain
from gateway.config import GatewayConfig
from gateway.control import SOCKET_NAME, ControlServer
from gateway.desired import DesiredTwins
from gateway.enrol import EnrolmentError, EnrolmentState, EnrolPaths, RenewalPolicy, Renewer
from gateway.events import EventWriter
from gateway.heartbeat import HeartbeatSender
from gateway.hooks import IngestFilter, IngestObserver
from gateway.ingest import Ingest
from gateway.metrics import GatewayMetrics, gateway_readiness
from gateway.outbox import Outbox
from gateway.policy_bundles import PolicyBundles
from gateway.policy_bundles import build as policy_bundles
from gateway.rules import RulesService
from gateway.rules.settings import STORE_FILE
from gateway.s1 import S1
from gateway.s2.events import S2Event
from gateway.s2.limit_rows import LimitRows, LimitRowsCollector
from gateway.s2.service import S2Service, coordination, to_record
from gateway.status import report as status_report
from gateway.twins import TwinReporter
from gateway.uplink import Uplink
from gateway.urgent import UrgentLane

if TYPE_CHECKING:
    from wasm import PolicyStage

log = logging.getLogger(__name__)


class Gateway:
    """The gateway's parts, built in dependency order (each from its own settings section),
    then joined in the supervision tree. ``transport`` carries every MQTT session (the
    in-memory broker's in unit tests)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        config_path: Path | None = None,
        stages: list[IngestFilter] | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.started = time.monotonic()
        self._signer: Signer | None = None
        gw = config.gateway
        self.metrics = GatewayMetrics()
        # every MQTT session reports its state on the gateway's registry through the transport
        transport = transport or MqttTransport(metrics=SessionMetrics(self.metrics.registry))
        state = Path(gw.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        write_marker(state)

        # the durable resources
        self.outbox = Outbox(
            state / "outbox.sqlite3",
            config.outbox,
            on_drop=self.metrics.count_drop,
            dead_letter_max_rows=config.ingest.dead_letter_max_rows,
        )
        self.link = GatewayLink(
            gw.id,
            read_secret(config.uplink.link_secret_file),
            state / "replay.sqlite3",
            cloud=config.uplink.cloud_id,
            zone=gw.zone,
            window_s=config.uplink.clock_window,
        )
        # every gateway event (S2, rules, policy flags) reaches the outbox through this one
        # algedonic signals and alerts, sent ahead of any backlog (gateway.urgent)
        self.urgent = UrgentLane(state / "urgent.sqlite3")
        # the audit chain: control-relevant actions, hash-linked, durable before they are
        # reported up (gateway.audit); the event writer records each batch's share first
        self.audit = AuditChain(state / "audit.sqlite3", gw.id, signer=self._node_signer)
        self.events = EventWriter(self.outbox.append_events, urgent=self.urgent, audit=self.audit)
        self.metrics.watch_events(self.events.dropped, self.events.queued)
        # the gateway's CRDT state (capabilities, twins, patterns, limits), shared by S1, the
        # rules and sync so a row merged from the cloud notifies whoever uses it
        self.store = Store(state / STORE_FILE, site=gw.id)

        # the workers, each after what it calls. S2's rate gate and lease table come first:
        # S1 admits every intent with the gate (principal, capability) and takes the lease of
        # every device command (intents, rule actions, desired twins) in the table; S2, built
        # after S1 (it moves a zombie's work through S1.reassign), ticks and sweeps them
        gate, leases = coordination(config.s2, self._s2_event)
        self.s1 = S1(
            config.s1,
            self.store,
            self.link,
            gateway=gw.id,
            local_broker=config.local_broker,
            cloud_broker=config.uplink.broker,
            state_dir=state,
            transport=transport,
            on_intent_final=self.metrics.observe_intent,
            gate=gate,
            leases=leases,
            report=self.events.submit,
        )
        self.s2 = S2Service(config.s2, reassign=self.s1.reassign, gate=gate, leases=leases)
        self.s2.register(self.metrics.registry)
        # the cloud's limits rows on top of [s2.limits], live (gateway.s2.limit_rows)
        self.limits = LimitRows(
            self.s2.gate,
            config.s2.limits,
            self.store,
            gateway=gw.id,
            zone=gw.zone,
            report=self.events.submit,
        )
        self.metrics.registry.register(LimitRowsCollector(self.limits))
        self.rules = RulesService(
            config.rules,
            self.store,
            self.events.append,
            gateway=gw.id,
            zone=gw.zone,  # the zone whose pattern.fleet rows apply while no zones row says
            invoke=self.s1.invoke,
            command=self.s1.command,  # device commands through S1: the lease, the answer
            transport=transport,
        )
        self.twins = TwinReporter(self.store, gw.twin_interval)
        # twin.desired rows become device commands through S1 until the report matches
        self.desired = DesiredTwins(
            self.store,
            self.s1.command,
            self.events.submit,
            confirm_s=max(5.0, 3 * gw.twin_interval),
        )
        # the command line changes rules through this, without a restart (gateway.control)
        self.control = ControlServer(state / SOCKET_NAME, self.store, config.rules.namespace)
        self.uplink = Uplink(
            config.uplink,
            self.outbox,
            self.metrics,
            self.link,
            gateway=gw.id,
            urgent=self.urgent,
            transport=transport,
        )
        self.sync = GatewaySync(
            config.sync,
            self.store,
            self.link,
            config.uplink.broker,
            gateway=gw.id,
            cloud=config.uplink.cloud_id,
            transport=transport,
        )
        self.policy = self._policy(config, config_path)
        # the cloud's signed policy bundles (gateway.policy_bundles), when enrolled: with no
        # [policy] a pass-all stage is built, the filters being fixed from here on
        self.bundles: PolicyBundles | None = policy_bundles(
            config,
            self.store,
            self.policy,
            report=self.events.submit,
            registry=self.metrics.registry,
        )
        if self.bundles is not None and self.policy is None:
            self.policy = self.bundles.stage
            self.metrics.watch_policy(self.policy.counts)
        # filters before the commit, observers after it on the stored readings (gateway.hooks)
        filters: list[IngestFilter] = [self.s2.stage]
        observers: list[IngestObserver] = [self.rules.stage, self.twins.stage]
        if self.policy is not None:
            filters.append(self.policy)
            observers.append(self.policy.observe)  # flags of stored readings become events
        self.ingest = Ingest(
            config.ingest,
            self.outbox,
            self.metrics,
            broker=config.local_broker,
            client_id=f"{gw.id}-ingest",
            stages=[*filters, *(stages or [])],
            observers=observers,
            transport=transport,
        )
        self.s2.watch("outbox_depth", self.outbox.depth)
        self.s2.watch("ingest_backlog", self.ingest.pending)
        self.metrics.watch(
            self.outbox.snapshot, self.uplink.status, self.ingest.session.is_connected
        )
        # last: it reports on every part (gateway.status), like /status
        self.heartbeat = HeartbeatSender(
            config.uplink,
            self.link,
            self.report,
            gateway=gw.id,
            registry=self.metrics.registry,
            transport=transport,
        )
        self.supervisor = self._tree()

    def _policy(self, config: GatewayConfig, config_path: Path | None) -> PolicyStage | None:
        if config.policy is None:
            return None
        from wasm import PolicyStage  # noqa: PLC0415 - wasmtime loads only with a policy

        base = config_path.parent if config_path is not None else None
        policy = PolicyStage.from_config(config.policy, base=base, report=self.events.submit)
        self.metrics.watch_policy(policy.counts)
        return policy

    def _tree(self) -> Supervisor:
        """The supervision tree (docs/architecture.md, "Supervision"): the workers restart
        alone (one_for_one: a twins crash no longer restarts the uplink); the durable
        resources come first under rest_for_one, so a reopened database restarts every
        worker that uses it."""
        config = self.config
        self.workers = Supervisor(
            "workers",
            [
                ChildSpec("events", self.events.run, wait_ready=True, shutdown_timeout=5),
                ChildSpec("audit-ship", self._ship_audit, wait_ready=True, shutdown_timeout=5),
                ChildSpec("twins", self.twins.run, wait_ready=True, shutdown_timeout=5),
                ChildSpec("s2", self._run_s2, wait_ready=True, shutdown_timeout=5),
                ChildSpec("limits", self.limits.run, wait_ready=True, shutdown_timeout=5),
                ChildSpec("rules", self.rules.run, wait_ready=True, shutdown_timeout=5),
                ChildSpec("control", self.control.run, wait_ready=True, shutdown_timeout=5),
                *(
                    [ChildSpec("policy", self.bundles.run, wait_ready=True, shutdown_timeout=5)]
                    if self.bundles is not None
                    else []
                ),
                ChildSpec("uplink", self.uplink.run, shutdown_timeout=5),
                ChildSpec("heartbeat", self.heartbeat.run, shutdown_timeout=5),
                *(
                    [ChildSpec("sync", self.sync.run, shutdown_timeout=5)]
                    if config.sync.enabled
                    else []
                ),
                ChildSpec("ingest", self.ingest.run, wait_ready=True, shutdown_timeout=5),
                *self.s1.child_specs(),
                *(
                    [ChildSpec("desired", self.desired.run, wait_ready=True, shutdown_timeout=5)]
                    if config.s1.enabled
                    else []
                ),
                *self._bridge(self.ingest.session.transport),
            ],
            strategy=Strategy.ONE_FOR_ONE,
            intensity=5,
            period=30,
        )
        self.workers.add_subtree(self.s1.supervisor)
        tree = Supervisor(
            "gateway",
            [
                ChildSpec("outbox", self._run_outbox, wait_ready=True, shutdown_timeout=10),
                ChildSpec(
                    "urgent",
                    holding(self.urgent.open, self.urgent.close, self.urgent.held),
                    wait_ready=True,
                    shutdown_timeout=10,
                ),
                ChildSpec(
                    "audit",
                    holding(self.audit.open, self.audit.close, self.audit.held),
                    wait_ready=True,
                    shutdown_timeout=10,
                ),
                ChildSpec(
                    "state",
                    holding(self.store.open, self.store.close, self.store.held),
                    wait_ready=True,
                    shutdown_timeout=10,
                ),
                self.workers.as_child(shutdown_timeout=60),
            ],
            strategy=Strategy.REST_FOR_ONE,
            intensity=5,
            period=30,
        )
        tree.add_subtree(self.workers)
        if config.uplink.enrol_dir:
            up = config.uplink
            self.renewer = Renewer(
                up.broker,
                Path(up.enrol_dir),
                RenewalPolicy(
                    cert_before_s=up.renew_cert_before,
                    link_every_s=up.renew_link_every,
                    check_every_s=up.renew_check_every,
                ),
                on_renewed=self._on_renewed,
            )
            self.workers.add_child(ChildSpec("renewer", self.renewer.run, shutdown_timeout=5))
        return tree

    async def _run_outbox(self, ctx: ChildContext) -> None:
        """Holds the outbox open; fails when its database does (not for a full disk), so the
        supervisor reopens it and restarts the children that use it (rest_for_one)."""
        await self.outbox.open()
        ctx.ready()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.outbox.held())
                while True:
                    await asyncio.sleep(60)
                    await self.outbox.expire()
        finally:
            await asyncio.shield(self.outbox.close())

    def _bridge(self, transport: Transport) -> list[ChildSpec]:
        """The field-device bridge (gateway.bridge), when ``[bridge]`` lists devices."""
        if not self.config.bridge.devices or self.config.bridge.process == "separate":
            return []
        from gateway.bridge import Bridge  # noqa: PLC0415 - loads the adapters only when used

        client_id = f"{self.config.gateway.id}-bridge"
        self.bridge = Bridge(
            self.config.bridge,
            self.config.local_broker,
            client_id=client_id,
            transport=transport,
            registry=self.metrics.registry,
        )
        return [ChildSpec("bridge", self.bridge.run, shutdown_timeout=5)]

    def _node_signer(self) -> Signer | None:
        """The gateway's node key when it is enrolled (it signs the audit chain's head)."""
        if not self.config.uplink.enrol_dir:
            return None
        if self._signer is None:
            keys = KeyStore(EnrolPaths(Path(self.config.uplink.enrol_dir)).keys)
            self._signer = keys.signer() if keys.exists() else None
        return self._signer

    async def _ship_audit(self, ctx: ChildContext) -> None:
        """Audit entries to the outbox (then to the cloud), the chain's head to the store."""

        async def put_head(row: dict[str, object]) -> None:
            value = json.dumps(row, sort_keys=True).encode()
            await self.store.put("audit.heads", f"{self.config.gateway.id}/head", value)

        await self._record_trust()
        await self.audit.ship(ctx, self.outbox.append_events, put_head)

    async def _record_trust(self) -> None:
        """The enrolment (``cybernetic gateway enrol`` runs before the daemon) and a renewal
        the daemon did not record (it stopped first), each appended to the audit chain once."""
        if not self.config.uplink.enrol_dir:
            return
        try:
            state = EnrolPaths(Path(self.config.uplink.enrol_dir)).load()
        except (OSError, ValueError, EnrolmentError):  # not enrolled, or unreadable
            return
        payload = _trust_payload(state)
        last = await self.audit.last("trust.")
        if last is not None and {k: last.get(k) for k in payload} == payload:
            return
        kind = "trust.enrolled" if last is None else "trust.renewed"
        await self.audit.append(kind, "gateway", state.gateway, payload)

    def _on_renewed(self, state: EnrolmentState) -> None:
        """A renewal made a new link secret: sign with it from now on (the TLS context picks
        up a renewed certificate by itself at the next connection)."""
        self.link.rekey(read_secret(EnrolPaths(Path(self.config.uplink.enrol_dir)).link_secret))
        log.info("link keys renewed")
        now = int(time.time() * 1000)
        payload = _trust_payload(state)
        self.events.submit([EventRecord("trust.renewed", now, state.gateway, "info", payload)])

    def _s2_event(self, event: S2Event) -> None:
        """The events of S2's gate and lease table (built before S2): to the event writer."""
        self.events.submit([to_record(event)])

    async def _run_s2(self, ctx: ChildContext) -> None:
        await self.s2.run(ctx, self.events.submit)

    def sessions(self) -> list[Session]:
        """Every MQTT session of the gateway (for ``cybernetic status``)."""
        found = [self.ingest.session, self.uplink.session, self.s1.executor.session]
        found.append(self.heartbeat.session)
        found.append(self.s1.server.session)
        if self.rules.runner.session is not None:
            found.append(self.rules.runner.session)
        if self.sync.session is not None:
            found.append(self.sync.session)
        return found

    def report(self) -> dict[str, Any]:
        """``/status``: see gateway.status."""
        return status_report(self)

    def status(self) -> str:
        s = self.outbox.snapshot()
        ingest = "up" if self.ingest.connected else "down"
        if self.ingest.paused or s.full:
            ingest = "PAUSED (disk full; the broker keeps the readings)"
        link = "up" if self.uplink.connected else "down"
        return f"ingest {ingest}, uplink {link}, outbox {s.rows} rows"

    RESTART_SECTIONS = ("gateway", "local_broker", "outbox", "s1", "sync", "metrics")
    """Sections a reload cannot apply (docs/configuration.md, "Reload")."""

    async def reload(self) -> None:
        """SIGHUP: apply what can change while running; name what needs a restart."""
        if self.config_path is None:
            return
        new = load(self.config_path, GatewayConfig)
        set_level(new.log.level)
        self.ingest.apply(new.ingest)
        later = [f"uplink.{f}" for f in self.uplink.apply(new.uplink)]
        self.limits.apply_config(new.s2.limits)  # the store's limits rows stay on top
        self.rules.reload()
        bundled = self.bundles is not None and self.bundles.applied is not None
        if self.policy is not None and new.policy is not None and not bundled:
            base = self.config_path.parent
            await asyncio.to_thread(self.policy.apply, new.policy, base)
        later += [s for s in self.RESTART_SECTIONS if getattr(new, s) != getattr(self.config, s)]
        if new.ingest.topic != self.config.ingest.topic:
            later.append("ingest.topic")
        if new.ingest.dead_letter_max_rows != self.config.ingest.dead_letter_max_rows:
            later.append("ingest.dead_letter_max_rows")
        if new.rules != self.config.rules:  # the pattern files and the store were re-read
            later.append("rules (the section's settings)")
        if msgspec.structs.replace(new.s2, limits=self.config.s2.limits) != self.config.s2:
            later.append("s2 (all but s2.limits)")
        if new.log.format != self.config.log.format:
            later.append("log.format")
        if (new.policy is None) != (self.config.policy is None) and (
            new.policy is None or self.policy is None  # a bundle watcher's stage takes a file
        ):
            later.append("policy")
        for name in later:
            log.warning(
                "configuration changed: takes effect at the next restart", extra={"setting": name}
            )
        await self.audit.append(
            "config.reloaded", "operator", str(self.config_path), {"needs_restart": later}
        )
        log.info(
            "configuration reloaded",
            extra={"path": str(self.config_path), "needs_restart": later},
        )

    async def serve(self) -> int:
        server = None
        if self.config.metrics.enabled:
            server = MetricsServer(
                self.metrics.registry,
                self.config.metrics.listen,
                ready=gateway_readiness(self.outbox.snapshot, self.ingest.session.is_connected),
                status=self.report,
            )
            server.start()
        try:
            return await Service(self.supervisor, reload=self.reload, status=self.status).run()
        finally:
            self.link.close()
            if server is not None:
                server.close()


def _trust_payload(state: EnrolmentState) -> dict[str, Any]:
    """What the audit chain records of the gateway's trust (no secret: ids, epoch, times)."""
    return {
        "cloud": state.cloud,
        "epoch": state.epoch,
        "cert_ms": state.cert_ms,
        "cert_not_after_ms": state.cert_not_after_ms,
        "link_ms": state.link_ms,
    }
