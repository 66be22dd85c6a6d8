"""Every error the policy toolchain raises, in one tree.

Callers catch :class:`PolicyError` to handle anything from this package, or one branch::

    PolicyError
    ├── PolicyCompileError        the source is not a valid policy
    │   └── PolicySyntaxError     ... with the line and column that is wrong
    ├── AgentLoadError            a wasm module was refused before it ever ran
    │   ├── MalformedModuleError  not valid WebAssembly (wasmtime refused to compile it)
    │   ├── AbiError              valid wasm, but not a policy agent (exports, imports, manifest)
    │   └── ResourceLimitError    asks for more memory, tables or instances than the host allows
    ├── AgentFaultError           the agent failed during a call; the host re-instantiates it
    │   └── AgentRunawayError     ... because it ran out of fuel (an endless or too-long loop)
    └── BindingsChangedError      the installed wasmtime bindings no longer offer the fast call

Foreign errors (``wasmtime.WasmtimeError``, ``wasmtime.Trap``) are mapped at the boundary and
chained (``raise ... from exc``), so the original message is never lost.
"""

from __future__ import annotations


class PolicyError(Exception):
    """Base of every error raised by the ``wasm`` package."""


class PolicyCompileError(PolicyError):
    """The policy source is valid syntax but means nothing we can compile (limits, names)."""


class PolicySyntaxError(PolicyCompileError):
    """The policy source does not parse; ``line`` and ``column`` are 1-based."""

    def __init__(self, message: str, line: int, column: int, source_name: str = "<policy>") -> None:
        super().__init__(f"{source_name}:{line}:{column}: {message}")
        self.reason = message
        self.line = line
        self.column = column
        self.source_name = source_name


class AgentLoadError(PolicyError):
    """A module was refused at load time; nothing of it ran."""


class MalformedModuleError(AgentLoadError):
    """The bytes are not a WebAssembly module wasmtime accepts."""


class AbiError(AgentLoadError):
    """The module is valid wasm but does not follow the policy-agent ABI."""


class ResourceLimitError(AgentLoadError):
    """The module needs more memory, tables or instances than the store limits allow."""


class AgentFaultError(PolicyError):
    """A call into the agent trapped; the batch got no decisions and the agent was reset."""

    def __init__(self, message: str, trap_code: str | None = None) -> None:
        super().__init__(message)
        self.trap_code = trap_code


class AgentRunawayError(AgentFaultError):
    """The agent used up its fuel budget for one call (``fuel`` units) and was stopped."""

    def __init__(self, message: str, fuel: int) -> None:
        super().__init__(message, trap_code="OUT_OF_FUEL")
        self.fuel = fuel


class BindingsChangedError(PolicyError):
    """The wasmtime Python bindings lack a non-public piece the fast call path relies on."""
