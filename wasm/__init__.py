"""WASM policy agents: a small policy language, compiled to WebAssembly, run under wasmtime.

Public API (see docs/policy-language.md)::

    compiled = compile_policy_file("cold-chain.policy")      # or compile_policy(source)
    agent = PolicyAgent.load(compiled, zones={"sensor-1": "cold-store"})
    decisions = agent.evaluate_batch(readings)                # list[Decision], same order
    result = enforce(agent, readings)                         # kept / flagged / denied

Compiling and loading are CPU-bound (milliseconds): run them in a worker thread from async
code. Evaluation is microseconds per batch and may run on the event loop.
"""

from wasm.compiler import CompiledPolicy, compile_policy, compile_policy_file
from wasm.decision import Decision
from wasm.enforce import Enforced, enforce
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
from wasm.stage import PolicyConfig, PolicyStage, StageCounts

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
