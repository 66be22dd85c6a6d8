"""Compiled agents decide exactly as the reference interpreter does, on random everything."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from wasm_policy_strategies import ZONES, policies, readings, same_decision

from amcp.wire.telemetry import Reading
from wasm import ast
from wasm.compiler import compile_policy
from wasm.host import PolicyAgent
from wasm.parser import parse
from wasm.reference import ReferenceInterpreter


def _zone(device: str) -> str:
    return ZONES.get(device, "")


@given(
    policy=policies(), batch=st.lists(readings, max_size=12), singles=st.lists(readings, max_size=4)
)
def test_compiled_agent_agrees_with_reference(
    policy: ast.Policy, batch: list[Reading], singles: list[Reading]
) -> None:
    source = ast.to_source(policy)
    compiled = compile_policy(source, batch_capacity=5, device_capacity=8)
    agent = PolicyAgent.load(compiled, zones=ZONES)
    reference = ReferenceInterpreter(parse(source), _zone)
    got = agent.evaluate_batch(batch) + [agent.evaluate(r) for r in singles]
    want = reference.evaluate_batch(batch + singles)
    assert len(got) == len(want)
    for reading, g, w in zip(batch + singles, got, want, strict=True):
        assert same_decision(g, w), (reading, g, w, source)


@given(policy=policies())
def test_printed_policies_parse_back_to_the_same_tree(policy: ast.Policy) -> None:
    assert parse(ast.to_source(policy)) == policy
