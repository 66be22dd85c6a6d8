"""The parser: useful errors with positions, and the example policies compile."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasm import ast
from wasm.compiler import compile_policy, compile_policy_file
from wasm.errors import PolicyCompileError, PolicySyntaxError
from wasm.host import PolicyAgent
from wasm.parser import parse

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "policies").glob("*.policy"))


@pytest.mark.parametrize(
    ("source", "line", "column", "fragment"),
    [
        ("rule a when t > 1 then explode", 1, 24, "expected an action"),
        ("rule a when t + 1 then deny", 1, 13, "expected a condition"),
        ("rule a\n  when t > 1 and 3 then deny", 2, 14, "expected a condition"),
        ("rule a when 1 < t < 2 then deny", 1, 19, "do not chain"),
        ("rule a when rate(7) > 1 then deny", 1, 18, "duration"),
        ('rule a when device > "x" then deny', 1, 20, "after 'device'"),
        ("rule a when t > 1 then deny\nrule a when true then flag", 2, 1, "defined twice"),
        ("rule a when t > 1 then deny because 'x'", 1, 37, "unexpected character"),
        ("rule hour when true then deny", 1, 6, "keyword"),
        ("rule a when min(t) > 1 then deny", 1, 13, "argument"),
        ("rule a when true then transform t = t > 1", 1, 37, "expected a number"),
        ("rule a when true then transform t = 1, t = 2", 1, 42, "assigned twice"),
        ("default maybe", 1, 9, "default must be"),
        ('rule a when "x" == t then deny', 1, 13, "string"),
    ],
)
def test_syntax_errors_name_line_and_column(
    source: str, line: int, column: int, fragment: str
) -> None:
    with pytest.raises(PolicySyntaxError) as info:
        parse(source)
    assert (info.value.line, info.value.column) == (line, column), str(info.value)
    assert fragment in info.value.reason


def test_precedence_and_keywords() -> None:
    policy = parse('rule a when not t > 1 or has field("hour") and -2 * x + 1 >= abs(y) then flag')
    when = policy.rules[0].when
    assert isinstance(when, ast.Or)
    assert when.left == ast.Not(ast.Compare(">", ast.Field("t"), ast.Num(1.0)))
    assert isinstance(when.right, ast.And)
    assert when.right.left == ast.Has("hour")


def test_too_many_device_tests_is_a_compile_error() -> None:
    conds = " or ".join(f'device == "d{i}"' for i in range(65))
    with pytest.raises(PolicyCompileError, match="64"):
        compile_policy(f"rule a when {conds} then deny")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_policies_compile_and_load(path: Path, tmp_path: Path) -> None:
    compiled = compile_policy_file(path)
    assert compiled.manifest.rules
    wasm_file = tmp_path / "agent.wasm"
    wasm_file.write_bytes(compiled.wasm)
    assert PolicyAgent.load(wasm_file).manifest == PolicyAgent.load(str(path)).manifest


def test_examples_exist() -> None:
    assert EXAMPLES


def test_syntax_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.policy"
    bad.write_text("rule a when then deny\n")
    with pytest.raises(PolicySyntaxError, match=str(bad)):
        compile_policy_file(bad)
