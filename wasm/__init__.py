"""WASM policy agents: a small policy language, compiled to WebAssembly, run under wasmtime.

Public API (see docs/policy-language.md)::

    compiled = compile_policy_file("cold-chain.policy")      # or compile_policy(source)
    agent = PolicyAgent.load(compiled, zones={"sensor-1": "cold-store"})
    decisions = agent.evaluate_batch(readings)                # list[Decision], same order
    result = enforce(agent, readings)                         # kept / flagged / denied

Compiling and loading are CPU-bound (milliseconds): run them in a worker thread from async
code. Evaluation is microseconds per batch and may run on the event loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wasm.compiler import CompiledPolicy, compile_policy, compile_policy_file
    from wasm.config import PolicyConfig
    from wasm.decision import Decision
    from wasm.enforcement import Enforced, enforce
    from wasm.errors import (
        AbiError,
        AgentFaultError,
        AgentLoadError,
        AgentRunawayError,
        BindingsChangedError,
        MalformedModuleError,
        PolicyCompileError,
        PolicyError,
        PolicySyntaxError,
        ResourceLimitError,
    )
    from wasm.host import PolicyAgent
    from wasm.sandbox import AgentLimits
    from wasm.stage import PolicyStage, StageCounts

# Names load on first use (PEP 562): a gateway without a policy never loads wasmtime
# (about 6 MB of resident memory), yet reads its configuration through wasm.PolicyConfig.
_WHERE = {
    "CompiledPolicy": "compiler",
    "compile_policy": "compiler",
    "compile_policy_file": "compiler",
    "Decision": "decision",
    "Enforced": "enforcement",
    "enforce": "enforcement",
    "AbiError": "errors",
    "AgentFaultError": "errors",
    "AgentLoadError": "errors",
    "AgentRunawayError": "errors",
    "BindingsChangedError": "errors",
    "MalformedModuleError": "errors",
    "PolicyCompileError": "errors",
    "PolicyError": "errors",
    "PolicySyntaxError": "errors",
    "ResourceLimitError": "errors",
    "PolicyAgent": "host",
    "AgentLimits": "sandbox",
    "PolicyConfig": "config",
    "PolicyStage": "stage",
    "StageCounts": "stage",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'wasm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"wasm.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AbiError",
    "AgentFaultError",
    "AgentLimits",
    "AgentLoadError",
    "AgentRunawayError",
    "BindingsChangedError",
    "CompiledPolicy",
    "Decision",
    "Enforced",
    "MalformedModuleError",
    "PolicyAgent",
    "PolicyCompileError",
    "PolicyConfig",
    "PolicyError",
    "PolicyStage",
    "PolicySyntaxError",
    "ResourceLimitError",
    "StageCounts",
    "compile_policy",
    "compile_policy_file",
    "enforce",
]
