"""The text syntax: what it builds, errors that point at the position, text round trips."""

from __future__ import annotations

import pytest
from goldrush_strategies import text_conds
from hypothesis import given
from hypothesis import strategies as st

from amcp.goldrush import ParseError, parse, to_text
from amcp.goldrush import query as q


def test_goldrush_operators_in_text() -> None:
    assert q.encode(parse("temp > 90 and cpu > 80")) == q.encode(
        q.All((q.Gt(("temp",), 90), q.Gt(("cpu",), 80)))
    )
    cases = {
        "a == 1": q.Eq(("a",), 1),
        "a = 'x'": q.Eq(("a",), "x"),
        "a != 1.5": q.Neq(("a",), 1.5),
        "a <> null": q.Neq(("a",), None),
        "a >= -2": q.Gte(("a",), -2),
        "a < 1e3": q.Lt(("a",), 1000.0),
        "a <= true": q.Lte(("a",), True),
        "exists(a.b)": q.Exists(("a", "b")),
        "a.b exists": q.Exists(("a", "b")),
        "missing(a)": q.Missing(("a",)),
        "a missing": q.Missing(("a",)),
        "true": q.Null(True),
        "false": q.Null(False),
        "a in [1, 'x', true]": q.In(("a",), (1, "x", True)),
        "a not in []": q.NotIn(("a",), ()),
        "tags contains 'hot'": q.Contains(("tags",), "hot"),
        "name startswith 'pump-'": q.Prefix(("name",), "pump-"),
        "name matches '^p[0-9]+$'": q.Regex(("name",), "^p[0-9]+$"),
        "name ~ 'x'": q.Regex(("name",), "x"),
        "supply.temp > `return`.temp": q.FieldCmp("gt", ("supply", "temp"), ("return", "temp")),
        "`odd key`.`in` == 1": q.Eq(("odd key", "in"), 1),
        "not a == 1": q.Not(q.Eq(("a",), 1)),
        "!(a == 1)": q.Not(q.Eq(("a",), 1)),
        "a == 1 || b == 2 && c == 3": q.Any(
            (q.Eq(("a",), 1), q.All((q.Eq(("b",), 2), q.Eq(("c",), 3))))
        ),
        's == "say \\"hi\\"\\n"': q.Eq(("s",), 'say "hi"\n'),
    }
    for text, want in cases.items():
        assert q.encode(parse(text)) == q.encode(want), text


def test_with_actions() -> None:
    got = parse("temp > 90 => alert, log")
    assert got == q.With(q.Gt(("temp",), 90), ("alert", "log"))


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("temp >", 6, "expected a number"),
        ("temp > 90 and", 13, "expected a field name"),
        ("temp >> 3", 6, "found '>'"),
        ("a ? 1", 2, "unexpected character '?'"),
        ('a == "abc', 5, "unterminated quote"),
        ("(a > 1", 6, "expected ')'"),
        ("a > 1 b > 2", 6, "expected 'and'"),
        ("a matches '('", 10, "bad regex"),
        ("a in [1,", 8, "expected a number"),
        ("a > 1 => ", 9, "expected action name"),
        ("a.", 2, "field name after '.'"),
        ("x == 'a\\q'", 7, "unknown escape"),
        ("and", 0, "expected a field name"),
        ("a > 1\n  or b ?", 13, "unexpected character"),
    ],
)
def test_errors_name_the_position(text: str, position: int, words: str) -> None:
    with pytest.raises(ParseError) as info:
        parse(text)
    assert info.value.position == position, str(info.value)
    assert words in str(info.value)
    assert f"offset {position}" in str(info.value)


def test_error_reports_line_and_column() -> None:
    with pytest.raises(ParseError) as info:
        parse("a > 1\n  or b ?")
    assert (info.value.line, info.value.column) == (2, 8)
    assert "^" in str(info.value)


@given(text_conds)
def test_text_roundtrip(cond: q.Cond) -> None:
    assert q.encode(parse(to_text(cond))) == q.encode(cond)


@given(st.text(alphabet="ab()=<>!'\" .019[],`~&|-et", max_size=30))
def test_garbage_gives_parse_error_with_position_in_range(text: str) -> None:
    error: ParseError | None = None
    try:
        parse(text)
    except ParseError as exc:
        error = exc
    if error is not None:
        assert 0 <= error.position <= len(text)
