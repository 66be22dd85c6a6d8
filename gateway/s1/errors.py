"""S1's errors. Each names what was refused and why, with the facts as attributes::

S1Error
├── SpawnRefusedError            a unit could not be started
│   ├── DepthLimitError          past the recursion depth limit
│   ├── ChildQuotaError          the parent already has its quota of children
│   ├── SpawnBreakerOpenError    a spawn storm opened the circuit breaker
│   ├── UnitExistsError          a sibling of that name is running
│   └── UnknownUnitError         no unit at that path
├── QuotaExceededError           a running unit went over a quota
│   ├── RateQuotaError           message rate
│   └── MemoryQuotaError         buffered bytes
├── CommandError                 a device command did not complete
│   ├── DeviceTimeoutError       the device said nothing for too long
│   └── DeviceFailedError        the device answered "failed"
└── CapabilityFailedError        a capability the gateway invoked itself did not complete
"""

from __future__ import annotations


class S1Error(Exception):
    """Base of S1's errors."""


class SpawnRefusedError(S1Error):
    """A unit was not started."""


class DepthLimitError(SpawnRefusedError):
    def __init__(self, path: str, depth: int, max_depth: int) -> None:
        super().__init__(
            f"unit {path!r} refused: depth {depth} is past the recursion limit of {max_depth}"
        )
        self.path = path
        self.depth = depth
        self.max_depth = max_depth


class ChildQuotaError(SpawnRefusedError):
    def __init__(self, parent: str, max_children: int) -> None:
        super().__init__(
            f"unit {parent or '/'!r} already has its quota of {max_children} child units"
        )
        self.parent = parent
        self.max_children = max_children


class SpawnBreakerOpenError(SpawnRefusedError):
    def __init__(self, path: str, retry_after: float, spawns: int, window: float) -> None:
        super().__init__(
            f"unit {path!r} refused: spawn-storm breaker open ({spawns} spawns within "
            f"{window:g} s); retry in {retry_after:.1f} s"
        )
        self.path = path
        self.retry_after = retry_after
        self.spawns = spawns
        self.window = window


class UnitExistsError(SpawnRefusedError):
    def __init__(self, path: str) -> None:
        super().__init__(f"unit {path!r} is already running")
        self.path = path


class UnknownUnitError(SpawnRefusedError):
    def __init__(self, path: str) -> None:
        super().__init__(f"no unit at {path or '/'!r}")
        self.path = path


class QuotaExceededError(S1Error):
    """A unit went over one of its quotas (the work asking for more was refused)."""


class RateQuotaError(QuotaExceededError):
    def __init__(self, unit: str, rate: float) -> None:
        super().__init__(f"unit {unit or '/'!r} is over its message rate of {rate:g}/s")
        self.unit = unit
        self.rate = rate


class MemoryQuotaError(QuotaExceededError):
    def __init__(self, unit: str, wanted: int, limit: int) -> None:
        super().__init__(
            f"unit {unit or '/'!r} would buffer {wanted} bytes, over its quota of {limit}"
        )
        self.unit = unit
        self.wanted = wanted
        self.limit = limit


class CommandError(S1Error):
    """A device command did not complete."""

    def __init__(self, message: str, device: str, command_id: str, action: str) -> None:
        super().__init__(message)
        self.device = device
        self.command_id = command_id
        self.action = action


class DeviceTimeoutError(CommandError):
    def __init__(self, device: str, command_id: str, action: str, timeout: float) -> None:
        super().__init__(
            f"device {device!r} did not answer command {command_id} (action {action!r}) "
            f"within {timeout:g} s",
            device,
            command_id,
            action,
        )
        self.timeout = timeout


class DeviceFailedError(CommandError):
    def __init__(self, device: str, command_id: str, action: str, reason: str) -> None:
        super().__init__(
            f"device {device!r} failed command {command_id} (action {action!r}): {reason}",
            device,
            command_id,
            action,
        )
        self.reason = reason


class CapabilityFailedError(S1Error):
    """A capability invoked by the gateway itself (a rule's action) ended ``failed``.

    ``code`` is the intent failure code; ``permanent`` says whether trying again can help
    (an unknown capability or arguments its schema refuses cannot).
    """

    PERMANENT = frozenset({"unknown_capability", "bad_args"})

    def __init__(self, capability: str, code: str, message: str) -> None:
        super().__init__(f"capability {capability!r} failed ({code}): {message}")
        self.capability = capability
        self.code = code

    @property
    def permanent(self) -> bool:
        return self.code in self.PERMANENT
