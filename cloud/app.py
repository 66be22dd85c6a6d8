"""The cloud process: gateway telemetry into the reading store (S3-S5 come in later waves).

With ``[cloud] role = "ingest"`` only the reading store, ingest and upkeep run: an extra worker
that shares the gateway uplinks with the others (``[ingest] shared_group``, docs/scale.md).

Tree (docs/architecture.md, "Supervision")::

    cloud (rest_for_one: the durable resources, then the workers that use them)
    ├── readings    the reading store on SQLite or PostgreSQL; fails if its database fails
    ├── state       the cloud's CRDT store (amcp.store)
    └── workers (one_for_one)
        ├── ingest      cloud broker → store → ack (or nack) to the gateway
        ├── upkeep      rollups per minute and hour, retention (cloud.storage.upkeep)
        ├── audit       gateway audit chains into the Merkle log, signed tree heads
        ├── mitigations S4: a mitigation proposed for every alert (cloud.mitigations)
        ├── snapshots   digests of the CRDT state, into the audit log (cloud.snapshots)
        ├── sync        CRDT deltas with every gateway (amcp.sync)
        ├── s1          capability registry from announcements, intent router
        ├── fleet       every gateway's heartbeats → the fleet table (alive, late, lost)
        ├── control     the CLI's socket (cloud.control): limits, desired twins, patterns,
        │               zones, signed policy bundles
        ├── enrolment   one-time-token enrolment (with a PKI directory)
        └── crl         re-signs the fleet CRL on schedule, expiry metrics (cloud.crl)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from amcp.crypto.keys import Ed25519Signer
from amcp.crypto.keystore import KeyStore
from amcp.link import CloudLinks, secrets_in_dir
from amcp.runtime.config import load
from amcp.runtime.logs import set_level
from amcp.runtime.metrics import MetricsServer, Readiness, condition, register_build_info
from amcp.runtime.mqtt import MqttTransport
from amcp.runtime.service import Service
from amcp.runtime.session import Session, SessionMetrics, Transport
from amcp.runtime.statemarker import write_marker
from amcp.runtime.supervisor import ChildContext, ChildSpec, Strategy, Supervisor, holding
from amcp.store import Store
from amcp.sync import CloudSync
from cloud.audit import AuditLog
from cloud.audit_trail import CloudTrail
from cloud.authoring import Authoring
from cloud.config import CloudConfig
from cloud.control import SOCKET_NAME as CONTROL_SOCKET
from cloud.control import CloudControl
from cloud.crl import crl_child_specs
from cloud.enrolment import open_enrolment
from cloud.fleet import Fleet
from cloud.ingest import CloudIngest
from cloud.llm.engine import Engine as LlmEngine
from cloud.mitigations import Mitigations
from cloud.readings import ReadingStore
from cloud.s1 import CloudS1
from cloud.snapshots import Snapshots
from cloud.status import report as status_report
from cloud.storage.engine import PendingMigrationsError
from cloud.storage.settings import engine_for
from cloud.storage.upkeep import Upkeep

log = logging.getLogger(__name__)


def _audit_signer(state: Path, cloud_id: str) -> Ed25519Signer:
    """The key that signs the audit log's tree heads (made on first start, in the state
    directory: its public half is in ``audit-key/keyring.json``)."""
    keys = KeyStore(state / "audit-key")
    return keys.signer() if keys.exists() else keys.generate(cloud_id)


class Cloud:
    def __init__(
        self,
        config: CloudConfig,
        *,
        config_path: Path | None = None,
        transport: Transport | None = None,
    ) -> None:
        """``transport`` carries every MQTT session (the in-memory broker's in unit tests)."""
        self.config = config
        self.config_path = config_path
        self.started = time.monotonic()
        self.registry = CollectorRegistry()
        register_build_info(self.registry, "cloud")
        # every MQTT session reports its state on the cloud's registry through the transport
        self.transport = transport or MqttTransport(metrics=SessionMetrics(self.registry))
        state = Path(config.cloud.state_dir)
        # SQLite in the state directory, or PostgreSQL by DSN ([storage], cloud.storage)
        self.engine = engine_for(config.storage, state, registry=self.registry)
        self.store = ReadingStore(self.engine)
        self.upkeep = Upkeep(
            self.engine,
            config.storage.retention,
            window_s=config.links.clock_window,
            rollup_every_s=config.storage.rollup_every_s,
            registry=self.registry,
        )
        state.mkdir(parents=True, exist_ok=True)
        write_marker(state)
        # gateway audit chains as one Merkle log with signed tree heads (cloud.audit)
        signer = _audit_signer(state, config.cloud.id)
        self.audit = AuditLog(self.engine, signer, registry=self.registry)
        # what the cloud itself decides and writes, a chain in the same log (cloud.audit_trail)
        self.trail = CloudTrail(self.engine, config.cloud.id)
        self.links = CloudLinks(
            secrets_in_dir(Path(config.links.secrets_dir)),
            state / "replay.sqlite3",
            cloud=config.cloud.id,
            window_s=config.links.clock_window,
        )
        self.ingest = CloudIngest(
            config.ingest,
            self.store,
            self.registry,
            self.links,
            broker=config.broker,
            transport=self.transport,
        )
        # the cloud's CRDT state, shared by S1's registry and sync with every gateway
        self.state_store = Store(state / "store.sqlite3", site=config.cloud.id)
        self.s1 = CloudS1(
            config.s1,
            self.state_store,
            self.links,
            broker=config.broker,
            site=config.cloud.id,
            transport=self.transport,
        )
        self.sync = CloudSync(
            config.sync,
            self.state_store,
            self.links,
            config.broker,
            cloud=config.cloud.id,
            transport=self.transport,
        )
        # `cybernetic fleet` sets limits, desired twins, patterns and zones, and `cybernetic
        # policy push|rollback` writes signed bundles, through this one socket (cloud.control)
        self.authoring = Authoring(
            self.state_store, known_gateways=self._known_gateways, trail=self.trail
        )
        self.snapshots = Snapshots(self.state_store, self.engine, self.trail)
        self.control = CloudControl(state / CONTROL_SOCKET, self.authoring)
        self.fleet = Fleet(
            config.fleet,
            self.links,
            self.registry,
            broker=config.broker,
            topic_prefix=config.ingest.topic_prefix,
            transport=self.transport,
        )
        # S4/S5 reason through this engine: [llm]'s providers, then the built-in planner
        self.llm = LlmEngine.from_settings(config.llm, registry=self.registry)
        # S4: a mitigation proposed for every alert, in the causality graph (cloud.mitigations)
        self.mitigations = Mitigations(self.engine, self.llm, trail=self.trail)
        # the durable resources under rest_for_one, the workers one_for_one beneath them: see
        # the tree in docs/architecture.md, section Supervision
        ingest_only = config.cloud.role == "ingest"
        self.workers = Supervisor(
            "workers",
            [
                ChildSpec("ingest", self.ingest.run, wait_ready=True, shutdown_timeout=5),
                ChildSpec("upkeep", self.upkeep.run, shutdown_timeout=5),
            ]
            if ingest_only
            else [
                ChildSpec("ingest", self.ingest.run, wait_ready=True, shutdown_timeout=5),
                ChildSpec("upkeep", self.upkeep.run, shutdown_timeout=5),
                ChildSpec("audit", self.audit.run, wait_ready=True, shutdown_timeout=5),
                ChildSpec("mitigations", self.mitigations.run, shutdown_timeout=5),
                ChildSpec("snapshots", self.snapshots.run, shutdown_timeout=5),
                *(
                    [ChildSpec("sync", self.sync.run, shutdown_timeout=5)]
                    if config.sync.enabled
                    else []
                ),
                *self.s1.child_specs(),
                ChildSpec("fleet", self.fleet.run, shutdown_timeout=5),
                ChildSpec("control", self.control.run, wait_ready=True, shutdown_timeout=5),
                *(
                    [ChildSpec("enrolment", self._run_enrolment, shutdown_timeout=5)]
                    if config.enrolment.pki_dir
                    else []
                ),
                *crl_child_specs(config.enrolment, self.registry),
            ],
            strategy=Strategy.ONE_FOR_ONE,
            intensity=5,
            period=30,
        )
        self.supervisor = Supervisor(
            "cloud",
            [
                ChildSpec(
                    "readings",
                    holding(self.store.open, self.store.close, self.store.held),
                    wait_ready=True,
                    shutdown_timeout=10,
                ),
                *(
                    []
                    if ingest_only
                    else [
                        ChildSpec(
                            "state",
                            holding(
                                self.state_store.open, self.state_store.close, self.state_store.held
                            ),
                            wait_ready=True,
                            shutdown_timeout=10,
                        )
                    ]
                ),
                self.workers.as_child(shutdown_timeout=40),
            ],
            strategy=Strategy.REST_FOR_ONE,
            intensity=5,
            period=30,
        )
        self.supervisor.add_subtree(self.workers)

    def _known_gateways(self) -> list[str]:
        """Gateways with a link secret: the fleet as the cloud knows it besides its sync peers
        (``applied on N of M`` counts a gateway that never connected as not applied)."""
        try:
            entries = list(Path(self.config.links.secrets_dir).iterdir())
        except OSError:
            return []
        return sorted(p.name for p in entries if p.is_file() and not p.name.startswith("."))

    async def _run_enrolment(self, ctx: ChildContext) -> None:
        """Answer gateways enrolling with one-time tokens (docs/trust.md)."""
        settings = self.config.enrolment
        enrolment = open_enrolment(
            Path(settings.pki_dir),
            links_dir=Path(self.config.links.secrets_dir),
            cert_valid_s=settings.cert_valid_s,
        )
        try:
            await enrolment.serve(self.config.broker, ctx, transport=self.transport)
        finally:
            enrolment.store.close()  # each restart opens the register again

    def sessions(self) -> list[Session]:
        """The cloud's long-lived MQTT sessions (for ``cybernetic status``)."""
        if self.config.cloud.role == "ingest":
            return [self.ingest.session]
        found = [self.ingest.session, self.s1.session, self.fleet.session]
        if self.sync.session is not None:
            found.append(self.sync.session)
        return found

    def report(self) -> dict[str, Any]:
        """``/status``: see cloud.status."""
        return status_report(self)

    async def reload(self) -> None:
        """SIGHUP: read the configuration again and apply what can change while running (the
        log level); what needs a restart is named in the log."""
        if self.config_path is None:
            return
        new = load(self.config_path, CloudConfig)
        set_level(new.log.level)
        later = [
            section
            for section in CloudConfig.__struct_fields__
            if section != "log" and getattr(new, section) != getattr(self.config, section)
        ]
        if new.log.format != self.config.log.format:
            later.append("log.format")
        for name in later:
            log.warning(
                "configuration changed: takes effect at the next restart",
                extra={"section": name},
            )
        level = msgspec.structs.replace(self.config.log, level=new.log.level)
        self.config = msgspec.structs.replace(self.config, log=level)
        log.info(
            "configuration reloaded",
            extra={"path": str(self.config_path), "needs_restart": later},
        )

    async def serve(self) -> int:
        if self.config.storage.migrate == "check":
            try:
                await self.store.open()  # the supervisor's open then finds it open
            except PendingMigrationsError as exc:
                log.critical("cloud cannot start", extra={"error": str(exc)})
                return 1
        server = None
        if self.config.metrics.enabled:
            ready = Readiness(
                {
                    "ingest": condition(
                        self.ingest.session.is_connected,
                        "subscribed on the cloud broker",
                        "not subscribed on the cloud broker",
                    )
                }
            )
            server = MetricsServer(
                self.registry, self.config.metrics.listen, ready=ready, status=self.report
            )
            server.start()
        try:
            return await Service(self.supervisor, reload=self.reload).run()
        finally:
            self.links.close()
            await self.llm.aclose()
            if server is not None:
                server.close()
