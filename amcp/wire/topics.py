"""Every MQTT topic the system uses, built and parsed in one place.

Gateway ↔ cloud (``prefix`` is the link's topic prefix, ``cybernetic/gw`` by default; every
message on these travels in a signed envelope, docs/wire.md)::

    {prefix}/{gateway}/telemetry          gateway → cloud   TelemetryBatch
    {prefix}/{gateway}/urgent             gateway → cloud   TelemetryBatch of urgent events only
    {prefix}/{gateway}/ack                cloud → gateway   BatchAck, BatchNack
    {prefix}/{gateway}/sync/up            gateway → cloud   SyncFrame
    {prefix}/{gateway}/sync/down          cloud → gateway   SyncFrame
    {prefix}/{gateway}/intents            cloud → gateway   Intent, Command (cancel)
    {prefix}/{gateway}/intents/updates    gateway → cloud   IntentUpdate
    {prefix}/{gateway}/capabilities       gateway → cloud   CapabilityAnnouncement (retained)
    {prefix}/{gateway}/heartbeat          gateway → cloud   Heartbeat (QoS 0, the fleet table)
    cybernetic/enrol/{gateway}/request    gateway → cloud   enrolment frames (docs/trust.md)
    cybernetic/enrol/{gateway}/response   cloud → gateway

Devices ↔ gateway, on the edge broker (plain JSON; the broker's ACL is the trust boundary)::

    devices/{device}/telemetry            device → gateway  readings (docs/telemetry.md)
    devices/{device}/commands/{id}        gateway → device  DeviceCommand (docs/s1.md)
    devices/{device}/responses/{id}       device → gateway  DeviceReply
"""

from __future__ import annotations

DEFAULT_PREFIX = "cybernetic/gw"
ENROL_PREFIX = "cybernetic/enrol"
DEVICES = "devices"

DEVICE_TELEMETRY_FILTER = f"{DEVICES}/+/telemetry"
RESPONSES_FILTER = f"{DEVICES}/+/responses/+"


# -- gateway <-> cloud -------------------------------------------------------------------
def telemetry(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/telemetry"


def telemetry_filter(prefix: str) -> str:
    """Every gateway's telemetry (the cloud's ingest subscription)."""
    return f"{prefix}/+/telemetry"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT shared subscription: the broker hands each message to one of the group's
    subscribers (cloud workers, docs/scale.md); received messages keep their own topic."""
    return f"$share/{group}/{topic_filter}" if group else topic_filter


def urgent(prefix: str, gateway: str) -> str:
    """Algedonic signals and alerts, sent ahead of the telemetry backlog (gateway.urgent)."""
    return f"{prefix}/{gateway}/urgent"


def urgent_filter(prefix: str) -> str:
    return f"{prefix}/+/urgent"


def ack(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/ack"


def sync_up(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/sync/up"


def sync_down(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/sync/down"


def intents(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/intents"


def intent_updates(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/intents/updates"


def capabilities(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/capabilities"


def heartbeat(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/heartbeat"


def heartbeat_filter(prefix: str) -> str:
    """Every gateway's heartbeats (the cloud's fleet table subscription)."""
    return f"{prefix}/+/heartbeat"


def enrol_request(gateway: str, prefix: str = ENROL_PREFIX) -> str:
    return f"{prefix}/{gateway}/request"


def enrol_response(gateway: str, prefix: str = ENROL_PREFIX) -> str:
    return f"{prefix}/{gateway}/response"


def gateway_of(prefix: str, topic: str, suffix: str) -> str | None:
    """The gateway a ``{prefix}/{gateway}/{suffix}`` topic names, or None if it is not one
    (a gateway id never contains ``/``)."""
    head, tail = prefix + "/", "/" + suffix
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    gateway = topic[len(head) : len(topic) - len(tail)]
    return gateway if gateway and "/" not in gateway else None


# -- devices <-> gateway -----------------------------------------------------------------
def device_telemetry(device: str) -> str:
    return f"{DEVICES}/{device}/telemetry"


def device_commands_filter(device: str) -> str:
    return f"{DEVICES}/{device}/commands/+"


def command(device: str, command_id: str) -> str:
    return f"{DEVICES}/{device}/commands/{command_id}"


def response(device: str, command_id: str) -> str:
    return f"{DEVICES}/{device}/responses/{command_id}"
