"""The command protocol between a gateway and a device on the local broker (JSON).

Devices are small MQTT clients, not aMCP nodes: the local broker's ACL is their trust
boundary (a device may write only ``devices/{itself}/telemetry`` and
``devices/{itself}/responses/+``, and read only ``devices/{itself}/commands/#``), so these
messages are plain JSON, easy to speak from firmware. One command, many replies::

    gateway → devices/{device}/commands/{command_id}   DeviceCommand
    device  → devices/{device}/responses/{command_id}  DeviceReply (0..n progress/partial,
                                                        then one done or failed)

``correlation`` carries the intent's correlation id down to the device and back, so a device's
log lines can be joined with the cloud's. A command with ``cancel`` set asks the device to stop
the command ``id`` names.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

ReplyState = Literal["accepted", "progress", "partial", "done", "failed"]
FINAL_STATES = frozenset({"done", "failed"})


class DeviceCommand(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    id: str
    action: str
    args: dict[str, Any] = {}
    correlation: str | None = None
    timeout_ms: int | None = None
    cancel: bool = False


class DeviceReply(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    id: str
    state: ReplyState
    data: Any = None
    progress: float | None = None
    error: str | None = None
    correlation: str | None = None


COMMAND_DECODER = msgspec.json.Decoder(DeviceCommand)
REPLY_DECODER = msgspec.json.Decoder(DeviceReply)
ENCODER = msgspec.json.Encoder()


def parse_response_topic(topic: str) -> tuple[str, str] | None:
    """``(device, command_id)`` of a response topic, or None for anything else."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "devices" or parts[2] != "responses":
        return None
    return parts[1], parts[3]
