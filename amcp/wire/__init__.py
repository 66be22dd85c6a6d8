"""Wire types shared by gateway and cloud (msgspec Structs, msgpack on the wire).

The integrator's entry points: :class:`Sealer` (``seal(message, topic, context) -> bytes``),
:class:`Opener` (``open(data, topic) -> Opened``, raising :class:`EnvelopeError` subclasses),
:func:`derive` for context fusion, and the message kinds in :mod:`amcp.wire.messages`.
"""

from amcp.wire.context import Context, derive, new_traceparent
from amcp.wire.envelope import MAX_FRAME_BYTES, WIRE_VERSION, Header
from amcp.wire.errors import (
    BadSignatureError,
    EnvelopeError,
    ExpiredKeyError,
    KeyRejectedError,
    MalformedEnvelopeError,
    MalformedPayloadError,
    OversizedEnvelopeError,
    ReplayedEnvelopeError,
    RevokedKeyError,
    SourceMismatchError,
    StaleEnvelopeError,
    UnknownKeyError,
    UnsupportedVersionError,
)
from amcp.wire.messages import (
    AlgedonicSignal,
    CapabilityAnnouncement,
    Command,
    Event,
    Heartbeat,
    Intent,
    IntentUpdate,
    Message,
    PolicyBundle,
    SyncFrame,
    kind_of,
)
from amcp.wire.seal import Opened, Opener, Sealer, Verified, decode_payload
from amcp.wire.telemetry import BatchAck, BatchNack, Reading, TelemetryBatch

__all__ = [
    "MAX_FRAME_BYTES",
    "WIRE_VERSION",
    "AlgedonicSignal",
    "BadSignatureError",
    "BatchAck",
    "BatchNack",
    "CapabilityAnnouncement",
    "Command",
    "Context",
    "EnvelopeError",
    "Event",
    "ExpiredKeyError",
    "Header",
    "Heartbeat",
    "Intent",
    "IntentUpdate",
    "KeyRejectedError",
    "MalformedEnvelopeError",
    "MalformedPayloadError",
    "Message",
    "Opened",
    "Opener",
    "OversizedEnvelopeError",
    "PolicyBundle",
    "Reading",
    "ReplayedEnvelopeError",
    "RevokedKeyError",
    "Sealer",
    "SourceMismatchError",
    "StaleEnvelopeError",
    "SyncFrame",
    "TelemetryBatch",
    "UnknownKeyError",
    "UnsupportedVersionError",
    "Verified",
    "decode_payload",
    "derive",
    "kind_of",
    "new_traceparent",
]
