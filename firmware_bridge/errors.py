"""The bridge's errors: every library error (asyncua, pymodbus, OS) is mapped to one of these
at the adapter's boundary, so the runner acts on a few kinds only::

    BridgeError
    ├── MappingError            the mapping is invalid (``errors``: one line per bad field,
    │                           each with its path); raised at start-up, never later
    └── DeviceError             about one device (``device``)
        ├── UnreachableError    connect failed or the link was lost: reconnect with backoff
        │   └── SecurityError   the peer refused our certificate or credentials (or we its)
        ├── AnswerError         the peer answered, but with an exception or garbage: counted
        └── CommandError        a command was refused (unknown point, not writable, bad value)
"""

from __future__ import annotations


class BridgeError(Exception):
    """Anything the bridge reports."""


class MappingError(BridgeError, ValueError):
    """A bad mapping; ``errors`` names each bad field with its path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("bad bridge mapping: " + "; ".join(errors))
        self.errors = errors


class DeviceError(BridgeError):
    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device


class UnreachableError(DeviceError):
    """The device cannot be reached now; the runner reconnects."""


class SecurityError(UnreachableError):
    """Certificate or user refused; retried at the longest backoff."""


class AnswerError(DeviceError):
    """The device answered a request with an exception or an unreadable reply."""


class CommandError(DeviceError):
    """A command cannot be carried out as asked."""
