"""Every message kind that travels between gateways and cloud, as one tagged union.

Each kind is a ``msgspec.Struct`` with ``tag=`` (encoded as ``"type": <tag>`` in a msgpack
map), decoded by one :data:`MESSAGE_DECODER` and dispatched with ``match``. Kinds owned by
later issues (commands, intents, policy bundles, sync frames) are deliberately small: their
owners extend them by the schema-evolution rules (docs/wire.md):

- new fields get defaults, so older peers can decode newer messages and vice versa;
- an existing field never changes its type or meaning, and a tag is never reused;
- a new kind is a new tag added to :data:`Message`; a peer that does not know it refuses it
  as :class:`~amcp.wire.errors.MalformedPayloadError` (after the signature was checked).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from amcp.wire.telemetry import BatchAck, BatchNack, TelemetryBatch


class _Kind(msgspec.Struct, frozen=True, omit_defaults=True):
    """Base of the kinds defined here (tags are set per subclass)."""


class Event(_Kind, frozen=True, tag="event"):
    """Something that happened (a rule match, a security event); ``name`` is dotted."""

    name: str
    ts_ms: int
    attrs: dict[str, Any] = {}
    severity: Literal["debug", "info", "warning", "error", "critical"] = "info"


class AlgedonicSignal(_Kind, frozen=True, tag="algedonic"):
    """Pain or pleasure that bypasses the hierarchy and goes straight to S5 (own topic)."""

    valence: Literal["pain", "pleasure"]
    intensity: float
    """0.0 (barely) to 1.0 (as strong as it gets)."""
    origin: str
    """The VSM system or unit that felt it, e.g. ``s1/gw-7/pump-3``."""
    reason: str
    ts_ms: int


class Command(_Kind, frozen=True, tag="command"):
    """An instruction for a device or capability; S1/S2 own its semantics (extensible)."""

    command_id: str
    target: str
    action: str
    args: dict[str, Any] = {}
    deadline_ms: int | None = None


class Intent(_Kind, frozen=True, tag="intent"):
    """A user's intent entering S1's dispatcher; answered by IntentUpdates with its id.

    ``timeout_ms`` is relative (a duration, not a deadline), so a gateway whose clock is off
    still gives the intent the time the sender meant.
    """

    intent_id: str
    text: str
    capability: str | None = None
    args: dict[str, Any] = {}
    timeout_ms: int | None = None
    principal: str = ""
    """Who asked: ``user:<name>`` or ``service:<name>``; ``""`` (an older sender) is treated
    as ``anonymous``. S1 applies the principal's quota (S2's ``user`` scope) to it."""
    zone: str = ""
    """The zone the intent comes from; S1 refuses it for a capability of another zone."""


IntentState = Literal["accepted", "running", "result", "done", "failed"]

INTENT_CANCEL = "intent.cancel"
"""``Command.action`` that cancels the intent named by ``Command.target`` (S1)."""

FailureCode = Literal[
    "timeout", "cancelled", "unknown_capability", "bad_args", "device", "refused", "error"
]


class IntentUpdate(_Kind, frozen=True, tag="intent.update"):
    """One step of an intent's lifecycle (accepted → running → streamed results → done/failed).

    ``running`` may repeat with ``progress`` (0.0..1.0); ``result`` carries one partial
    result in ``data``; ``done`` carries the final answer; ``failed`` names its ``code``.
    ``seq`` numbers the updates of one intent from 0 so a receiver can order and spot gaps.
    """

    intent_id: str
    state: IntentState
    data: Any = None
    error: str | None = None
    seq: int = 0
    progress: float | None = None
    code: FailureCode | None = None


class CapabilitySpec(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one capability does and what it costs; carried inside announcements (S1)."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = {}
    output_schema: dict[str, Any] = {}
    zone: str = ""
    cost: float = 0.0
    owner: str = ""
    """``gateway:<id>`` or ``device:<id>``: who does the work."""
    version: int = 1


class CapabilityAnnouncement(_Kind, frozen=True, tag="capability.announce"):
    """A node's capabilities, published retained: judged by ``version``, never by nonce.

    ``capabilities`` lists the names (older peers read only that); ``specs`` describes each.
    """

    node: str
    version: int
    capabilities: list[str] = []
    specs: list[CapabilitySpec] = []


class PolicyBundle(_Kind, frozen=True, tag="policy.bundle"):
    """A versioned, expiring policy for the gateways: ``body`` is the compiled wasm agent,
    ``source`` the policy text it came from (either may be empty, not both). Signed and
    distributed through the CRDT store by :mod:`amcp.bundles` (docs/policy-language.md,
    "Bundles")."""

    name: str
    version: int
    expires_ms: int
    body: bytes = b""
    zone: str = ""
    """The zone whose gateways apply it; ``""``: every zone."""
    source: str = ""
    issued_ms: int = 0
    cause: str = ""
    """What this bundle answers, as a causality-graph node id (``mitigation:...``, see
    ``cloud.causality``); the gateway names it as the cause of applying the bundle, so the
    trace of an enforcement walks back through the bundle to what led to it."""


class Heartbeat(_Kind, frozen=True, tag="heartbeat"):
    """Liveness for failure detectors (phi-accrual); ``seq`` lets them see gaps.

    A gateway sends one every ``[uplink] heartbeat_interval`` seconds (``gateway.heartbeat``)
    with what its status report says; the cloud's fleet table keeps the last (``cloud.fleet``).
    ``seq`` counts from 0 in each ``boot`` (a new id per process start).
    """

    node: str
    seq: int
    ts_ms: int
    uptime_s: float = 0.0
    version: str = ""
    boot: str = ""
    interval_s: float = 0.0
    """The sender's cadence: a receiver's detector knows it from the first heartbeat."""
    outbox_rows: int = 0
    outbox_bytes: int = 0
    outbox_oldest_age_s: float | None = None
    """Age of the oldest row waiting in the outbox (None: empty)."""
    ingest_rate: float = 0.0
    """Readings stored per second since the previous heartbeat."""
    ingest_paused: bool = False
    uplink_connected: bool = False
    uplink_lag_s: float = 0.0
    links: dict[str, bool] = {}
    """Each MQTT session of the sender, connected or not."""
    policy: str = ""
    policy_version: int | None = None
    patterns_generation: int = 0
    patterns_rules: int = 0


class SyncFrame(_Kind, frozen=True, tag="sync.frame"):
    """An opaque CRDT sync frame; the store/sync issue owns ``data``'s format per ``stream``."""

    stream: str
    data: bytes


Message = (
    TelemetryBatch
    | BatchAck
    | BatchNack
    | Event
    | AlgedonicSignal
    | Command
    | Intent
    | IntentUpdate
    | CapabilityAnnouncement
    | PolicyBundle
    | Heartbeat
    | SyncFrame
)

MESSAGE_TYPES: tuple[type[msgspec.Struct], ...] = (
    TelemetryBatch,
    BatchAck,
    BatchNack,
    Event,
    AlgedonicSignal,
    Command,
    Intent,
    IntentUpdate,
    CapabilityAnnouncement,
    PolicyBundle,
    Heartbeat,
    SyncFrame,
)

RETAINED_KINDS = frozenset({"capability.announce"})
"""Kinds that may arrive as retained MQTT messages (old envelopes): version-gated instead."""

MESSAGE_DECODER: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)
_ENCODER = msgspec.msgpack.Encoder()


def kind_of(message: Message | msgspec.Struct) -> str:
    """The tag of ``message``'s kind (what the envelope header's ``kind`` carries)."""
    tag = message.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{type(message).__name__} is not a tagged message kind")
    return tag


def encode_message(message: Message) -> bytes:
    return _ENCODER.encode(message)
