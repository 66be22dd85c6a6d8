"""The text syntax people write (``temp > 90 and cpu > 80``) to and from the AST.

Grammar (docs/patterns.md has it with examples)::

    query   := expr ( "=>" NAME ( "," NAME )* )? END
    expr    := conj ( ("or" | "||") conj )*
    conj    := unary ( ("and" | "&&") unary )*
    unary   := ("not" | "!") unary | primary
    primary := "(" expr ")" | "true" | "false"
             | ("exists" | "missing") "(" path ")"
             | path test
    test    := CMP (literal | path) | "in" list | "not" "in" list | "exists" | "missing"
             | "contains" literal | ("startswith" | "prefix") STRING | ("matches" | "~") STRING
    CMP     := "==" | "=" | "!=" | "<>" | ">" | ">=" | "<" | "<="
    path    := key ( "." key )*          key := NAME | `back-quoted key`
    literal := NUMBER | STRING | "true" | "false" | "null"

Every error is a :class:`ParseError` whose ``position`` is the offset of the offending
character, so an editor (or the cloud console) can underline it.
"""

from __future__ import annotations

import json
import math
import re
from typing import NamedTuple

from amcp.goldrush.errors import ParseError
from amcp.goldrush.query import (
    CMP_TYPES,
    All,
    Any,
    Cond,
    Contains,
    Exists,
    FieldCmp,
    In,
    Missing,
    Not,
    NotIn,
    Null,
    Path,
    Prefix,
    Query,
    Regex,
    Scalar,
    With,
)

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<quoted>`[^`]*`)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>=>|==|!=|<>|>=|<=|&&|\|\||[=<>!~()\[\],.])
    """,
    re.VERBOSE,
)
_CMP_OPS = {"==": "eq", "=": "eq", "!=": "neq", "<>": "neq", ">": "gt", ">=": "gte"}
_CMP_OPS |= {"<": "lt", "<=": "lte"}
_KEYWORDS = frozenset(
    {"and", "or", "not", "in", "exists", "missing", "contains", "startswith", "prefix"}
    | {"matches", "true", "false", "null"}
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


class _Tok(NamedTuple):
    kind: str  # num, str, quoted, name, op, end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos] in "\"'`":
                raise ParseError("unterminated quote", text, pos)
            raise ParseError(f"unexpected character {text[pos]!r}", text, pos)
        kind = m.lastgroup or "ws"
        if kind != "ws":
            out.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


def _unquote(tok: _Tok, text: str) -> str:
    body = tok.text[1:-1]
    chars: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise ParseError(f"unknown escape \\{nxt}", text, tok.pos + 1 + i)
            chars.append(_ESCAPES[nxt])
            i += 2
            continue
        chars.append(ch)
        i += 1
    return "".join(chars)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def error(self, message: str, tok: _Tok | None = None) -> ParseError:
        tok = tok or self.tok
        found = "end of input" if tok.kind == "end" else repr(tok.text)
        return ParseError(f"{message}, found {found}", self.text, tok.pos)

    def advance(self) -> _Tok:
        tok = self.tok
        self.i += 1
        return tok

    def at(self, *words: str) -> bool:
        tok = self.tok
        return tok.kind in ("op", "name") and tok.text in words

    def expect(self, word: str) -> _Tok:
        if not self.at(word):
            raise self.error(f"expected {word!r}")
        return self.advance()

    def query(self) -> Query:
        cond = self.expr()
        if self.at("=>"):
            self.advance()
            actions = [self.name("action name")]
            while self.at(","):
                self.advance()
                actions.append(self.name("action name"))
            if self.tok.kind != "end":
                raise self.error("expected ',' or end of pattern")
            return With(cond, tuple(actions))
        if self.tok.kind != "end":
            raise self.error("expected 'and', 'or', '=>' or end of pattern")
        return cond

    def name(self, what: str) -> str:
        tok = self.tok
        if tok.kind == "quoted":
            self.advance()
            return tok.text[1:-1]
        if tok.kind != "name" or tok.text in _KEYWORDS:
            raise self.error(f"expected {what}")
        self.advance()
        return tok.text

    def expr(self) -> Cond:
        conds = [self.conj()]
        while self.at("or", "||"):
            self.advance()
            conds.append(self.conj())
        return conds[0] if len(conds) == 1 else Any(tuple(conds))

    def conj(self) -> Cond:
        conds = [self.unary()]
        while self.at("and", "&&"):
            self.advance()
            conds.append(self.unary())
        return conds[0] if len(conds) == 1 else All(tuple(conds))

    def unary(self) -> Cond:
        if self.at("not", "!"):
            self.advance()
            return Not(self.unary())
        return self.primary()

    def primary(self) -> Cond:
        if self.at("("):
            self.advance()
            cond = self.expr()
            self.expect(")")
            return cond
        if self.at("true", "false"):
            return Null(self.advance().text == "true")
        if self.at("exists", "missing") and self.toks[self.i + 1].text == "(":
            word = self.advance().text
            self.advance()
            path = self.path()
            self.expect(")")
            return Exists(path) if word == "exists" else Missing(path)
        if self.tok.kind not in ("name", "quoted") or self.tok.text in _KEYWORDS:
            raise self.error("expected a field name, '(', 'not', 'true' or 'false'")
        return self.test(self.path())

    def path(self) -> Path:
        keys = [self.name("field name")]
        while self.at("."):
            self.advance()
            keys.append(self.name("field name after '.'"))
        return tuple(keys)

    def test(self, path: Path) -> Cond:  # noqa: PLR0911
        tok = self.tok
        if tok.kind == "op" and tok.text in _CMP_OPS:
            op = _CMP_OPS[self.advance().text]
            if self.tok.kind in ("name", "quoted") and self.tok.text not in _KEYWORDS:
                return FieldCmp(op, path, self.path())  # type: ignore[arg-type]
            return CMP_TYPES[op](path, self.literal())  # type: ignore[return-value]
        if self.at("in"):
            self.advance()
            return In(path, self.list())
        if self.at("not"):
            self.advance()
            self.expect("in")
            return NotIn(path, self.list())
        if self.at("exists"):
            self.advance()
            return Exists(path)
        if self.at("missing"):
            self.advance()
            return Missing(path)
        if self.at("contains"):
            self.advance()
            return Contains(path, self.literal())
        if self.at("startswith", "prefix"):
            self.advance()
            return Prefix(path, self.string())
        if self.at("matches", "~"):
            self.advance()
            str_tok = self.tok
            pattern = self.string()
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ParseError(f"bad regex: {exc}", self.text, str_tok.pos) from exc
            return Regex(path, pattern)
        raise self.error("expected a comparison, 'in', 'not in', 'exists', 'missing', 'contains'")

    def string(self) -> str:
        if self.tok.kind != "str":
            raise self.error("expected a quoted string")
        return _unquote(self.advance(), self.text)

    def literal(self) -> Scalar:
        tok = self.tok
        if tok.kind == "num":
            self.advance()
            if any(c in tok.text for c in ".eE"):
                return float(tok.text)
            return int(tok.text)
        if tok.kind == "str":
            return self.string()
        if self.at("true", "false", "null"):
            self.advance()
            return {"true": True, "false": False, "null": None}[tok.text]
        raise self.error("expected a number, string, true, false or null")

    def list(self) -> tuple[Scalar, ...]:
        self.expect("[")
        values: list[Scalar] = []
        if not self.at("]"):
            values.append(self.literal())
            while self.at(","):
                self.advance()
                values.append(self.literal())
        self.expect("]")
        return tuple(values)


def parse(text: str) -> Query:
    """Parse pattern text into the AST; raises :class:`ParseError` with a position."""
    return _Parser(text).query()


# ---- back to text -------------------------------------------------------------------------

_OP_TEXT = {"eq": "==", "neq": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _key(key: str) -> str:
    if _NAME_RE.fullmatch(key) and key not in _KEYWORDS:
        return key
    if "`" in key:
        raise ValueError(f"field key {key!r} contains a backquote and has no text form")
    return f"`{key}`"


def _path(path: Path) -> str:
    return ".".join(_key(k) for k in path)


def _lit(value: Scalar) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no text form")
        return repr(value)
    return str(value)


def _list(values: tuple[Scalar, ...]) -> str:
    return "[" + ", ".join(_lit(v) for v in values) + "]"


def to_text(query: Query) -> str:
    """The text form of a query; ``parse(to_text(q))`` gives back an equal query."""
    if isinstance(query, With):
        return f"{_text(query.cond, 0)} => {', '.join(query.actions)}"
    return _text(query, 0)


def _text(node: Cond, level: int) -> str:  # noqa: C901, PLR0911, PLR0912
    """``level`` 0: anything goes; 1: inside ``or``; 2: inside ``and``/``not``."""
    match node:
        case Any(conds=conds) if len(conds) >= 2:
            body = " or ".join(_text(c, 1) for c in conds)
            return f"({body})" if level >= 1 else body
        case All(conds=conds) if len(conds) >= 2:
            body = " and ".join(_text(c, 2) for c in conds)
            return f"({body})" if level >= 2 else body
        case All() | Any():
            raise ValueError(f"{type(node).__name__} with under two conditions has no text form")
        case Not(cond=cond):
            return f"not {_text(cond, 2)}"
        case Null(value=value):
            return "true" if value else "false"
        case Exists(path=path):
            return f"exists({_path(path)})"
        case Missing(path=path):
            return f"missing({_path(path)})"
        case In(path=path, values=values):
            return f"{_path(path)} in {_list(values)}"
        case NotIn(path=path, values=values):
            return f"{_path(path)} not in {_list(values)}"
        case Contains(path=path, value=value):
            return f"{_path(path)} contains {_lit(value)}"
        case Prefix(path=path, value=value):
            return f"{_path(path)} startswith {_lit(value)}"
        case Regex(path=path, pattern=pattern):
            return f"{_path(path)} matches {_lit(pattern)}"
        case FieldCmp(cmp=op, left=left, right=right):
            return f"{_path(left)} {_OP_TEXT[op]} {_path(right)}"
    tag = type(node).__struct_config__.tag
    return f"{_path(node.path)} {_OP_TEXT[str(tag)]} {_lit(node.value)}"
