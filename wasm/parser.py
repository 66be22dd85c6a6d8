"""Source text → :class:`wasm.ast.Policy`: a tokenizer and a Pratt parser.

Types are checked while parsing (every node kind is either numeric or boolean), so a
``PolicySyntaxError`` always points at the token where the mistake was made.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal, cast

from wasm import ast
from wasm.errors import PolicySyntaxError

MAX_RULES = 16_383
"""Decision codes keep the rule id in 14 bits (see the ABI)."""

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+|\#[^\n]*)
  | (?P<nl>\n)
  | (?P<duration>\d+(?:ms|s|m|h)\b)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|[<>+\-*/()\[\],=])
    """,
    re.VERBOSE,
)
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_CMP = frozenset(["==", "!=", "<", "<=", ">", ">="])
_BP_OR, _BP_AND, _BP_NOT, _BP_CMP, _BP_ADD, _BP_MUL, _BP_NEG = 1, 2, 3, 4, 5, 6, 7
_INFIX = {"or": _BP_OR, "and": _BP_AND, "+": _BP_ADD, "-": _BP_ADD, "*": _BP_MUL, "/": _BP_MUL}
_INFIX.update(dict.fromkeys(_CMP, _BP_CMP))
_FUNCS = {"abs": 1, "min": 2, "max": 2}
_CLOCKS = frozenset(["hour", "minute", "weekday"])
_ACTIONS = frozenset(["allow", "deny", "flag", "transform"])

Expr = ast.NumExpr | ast.BoolExpr


TokenKind = Literal["duration", "number", "string", "ident", "op", "eof"]


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    text: str
    line: int
    column: int


def tokenize(source: str, source_name: str = "<policy>") -> list[Token]:
    tokens: list[Token] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise PolicySyntaxError(
                f"unexpected character {source[pos]!r}", line, pos - line_start + 1, source_name
            )
        kind = m.lastgroup
        if kind == "nl":
            line, line_start = line + 1, m.end()
        elif kind != "ws":
            text = m.group()
            column = m.start() - line_start + 1
            tokens.append(Token(cast("TokenKind", kind), text, line, column))
        pos = m.end()
    tokens.append(Token("eof", "", line, pos - line_start + 1))
    return tokens


class _Parser:
    def __init__(self, source: str, source_name: str) -> None:
        self.name = source_name
        self.tokens = tokenize(source, source_name)
        self.i = 0

    # -- token helpers ----------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, message: str, tok: Token | None = None) -> PolicySyntaxError:
        t = tok or self.tok
        return PolicySyntaxError(message, t.line, t.column, self.name)

    def at(self, text: str) -> bool:
        return self.tok.kind in ("ident", "op") and self.tok.text == text

    def take(self) -> Token:
        t = self.tok
        self.i += 1
        return t

    def expect(self, text: str) -> Token:
        if not self.at(text):
            found = self.tok.text or "end of file"
            raise self.error(f"expected {text!r}, found {found!r}")
        return self.take()

    def expect_kind(self, kind: str, what: str) -> Token:
        if self.tok.kind != kind:
            raise self.error(f"expected {what}, found {self.tok.text or 'end of file'!r}")
        return self.take()

    def string(self) -> str:
        tok = self.expect_kind("string", "a string in double quotes")
        try:
            value: str = json.loads(tok.text)
        except ValueError as exc:
            raise self.error(f"bad escape in string: {exc}", tok) from exc
        return value

    # -- policy structure ---------------------------------------------------------------
    def policy(self) -> ast.Policy:
        name, version = "policy", 1
        if self.at("policy"):
            self.take()
            name = self.string()
            if self.at("version"):
                self.take()
                version = int(self.expect_kind("number", "a version number").text.split(".")[0])
        default: Literal["allow", "deny"] = "allow"
        default_reason = "no rule matched"
        if self.at("default"):
            self.take()
            if not (self.at("allow") or self.at("deny")):
                raise self.error("default must be 'allow' or 'deny'")
            default = cast("Literal['allow', 'deny']", self.take().text)
            if self.at("because"):
                self.take()
                default_reason = self.string()
        rules: list[ast.Rule] = []
        seen: set[str] = set()
        while self.tok.kind != "eof":
            start = self.tok
            rule = self.rule()
            if rule.name in seen:
                raise self.error(f"rule {rule.name!r} is defined twice", start)
            seen.add(rule.name)
            rules.append(rule)
        if len(rules) > MAX_RULES:
            raise self.error(f"a policy holds at most {MAX_RULES} rules, this one has {len(rules)}")
        return ast.Policy(name, version, default, default_reason, tuple(rules))

    def rule(self) -> ast.Rule:
        self.expect("rule")
        name_tok = self.expect_kind("ident", "a rule name")
        if name_tok.text in ast.IDENT_KEYWORDS:
            raise self.error(f"{name_tok.text!r} is a keyword, not a rule name", name_tok)
        self.expect("when")
        start = self.tok
        when = self.boolean(self.expr(0), start)
        self.expect("then")
        act_tok = self.tok
        if act_tok.text not in _ACTIONS or act_tok.kind != "ident":
            raise self.error("expected an action: allow, deny, flag or transform")
        self.take()
        action = cast("ast.Action", act_tok.text)
        assigns: list[tuple[str, ast.NumExpr]] = []
        if action == "transform":
            while True:
                target = self.field_name()
                if any(t == target for t, _ in assigns):
                    raise self.error(f"field {target!r} is assigned twice")
                self.expect("=")
                start = self.tok
                assigns.append((target, self.number(self.expr(0), start)))
                if not self.at(","):
                    break
                self.take()
        reason = f"rule {name_tok.text}"
        if self.at("because"):
            self.take()
            reason = self.string()
        return ast.Rule(name_tok.text, when, action, reason, tuple(assigns))

    def field_name(self) -> str:
        if self.at("field"):
            self.take()
            self.expect("(")
            name = self.string()
            self.expect(")")
            return name
        tok = self.expect_kind("ident", "a field name")
        if tok.text in ast.IDENT_KEYWORDS:
            raise self.error(f"{tok.text!r} is a keyword; write field({tok.text!r})", tok)
        return tok.text

    # -- expressions ----------------------------------------------------------------------
    def boolean(self, node: Expr, tok: Token | None = None) -> ast.BoolExpr:
        if not isinstance(node, ast.BOOL_NODES):
            raise self.error("expected a condition (true/false), found a number", tok)
        return node

    def number(self, node: Expr, tok: Token | None = None) -> ast.NumExpr:
        if not isinstance(node, ast.NUM_NODES):
            raise self.error("expected a number, found a condition", tok)
        return node

    def expr(self, min_bp: int) -> Expr:
        left = self.prefix()
        while True:
            op_tok = self.tok
            bp = _INFIX.get(op_tok.text) if op_tok.kind in ("op", "ident") else None
            if bp is None or bp <= min_bp:
                return left
            self.take()
            right = self.expr(bp)
            left = self.infix(op_tok, left, right)
            if bp == _BP_CMP and self.tok.text in _CMP:
                raise self.error("comparisons do not chain; use 'and'")

    def infix(self, op_tok: Token, left: Expr, right: Expr) -> Expr:
        op = op_tok.text
        if op == "or":
            return ast.Or(self.boolean(left, op_tok), self.boolean(right, op_tok))
        if op == "and":
            return ast.And(self.boolean(left, op_tok), self.boolean(right, op_tok))
        lhs, rhs = self.number(left, op_tok), self.number(right, op_tok)
        if op in _CMP:
            return ast.Compare(cast("ast.CmpOp", op), lhs, rhs)
        return ast.Arith(cast("ast.ArithOp", op), lhs, rhs)

    def prefix(self) -> Expr:  # noqa: C901, PLR0911, PLR0912 - one arm per prefix form
        tok = self.tok
        if tok.kind == "number":
            self.take()
            return ast.Num(float(tok.text))
        if tok.kind == "duration":
            raise self.error("a duration is only allowed inside rate(...)")
        if tok.kind == "string":
            raise self.error("a string is only allowed after 'device' or 'zone'")
        if self.at("("):
            self.take()
            inner = self.expr(0)
            self.expect(")")
            return inner
        if self.at("-"):
            self.take()
            if self.tok.kind == "number":
                return ast.Num(-float(self.take().text))
            return ast.Neg(self.number(self.expr(_BP_NEG), tok))
        if self.at("not"):
            self.take()
            return ast.Not(self.boolean(self.expr(_BP_NOT), tok))
        if tok.kind != "ident":
            raise self.error(f"unexpected {tok.text or 'end of file'!r}")
        word = tok.text
        if word in ("true", "false"):
            self.take()
            return ast.Const(word == "true")
        if word in ("device", "zone"):
            self.take()
            return self.str_test(cast("ast.StrSubject", word))
        if word == "has":
            self.take()
            return ast.Has(self.field_name())
        if word in _CLOCKS:
            self.take()
            return ast.Clock(cast("ast.ClockKind", word))
        if word == "lag_ms":
            self.take()
            return ast.Lag()
        if word == "rate":
            self.take()
            self.expect("(")
            dur = self.expect_kind("duration", "a duration such as 10s, 500ms, 1m or 1h")
            self.expect(")")
            digits = dur.text.rstrip("mhs")
            window = int(digits) * _UNITS[dur.text[len(digits) :]]
            if not 0 < window <= 86_400_000 * 366:
                raise self.error("a rate window is between 1ms and 366 days", dur)
            return ast.Rate(window)
        if word in _FUNCS:
            return self.call(word)
        if word == "field" or word not in ast.IDENT_KEYWORDS:
            return ast.Field(self.field_name())
        raise self.error(f"unexpected keyword {word!r}")

    def call(self, word: str) -> ast.NumExpr:
        tok = self.take()
        self.expect("(")
        args = [self.number(self.expr(0))]
        while self.at(","):
            self.take()
            args.append(self.number(self.expr(0)))
        self.expect(")")
        if len(args) != _FUNCS[word]:
            raise self.error(f"{word}() takes {_FUNCS[word]} argument(s), not {len(args)}", tok)
        return ast.Call(cast("ast.FuncName", word), tuple(args))

    def str_test(self, subject: ast.StrSubject) -> ast.StrTest:
        if self.at("in"):
            self.take()
            self.expect("[")
            values = [self.string()]
            while self.at(","):
                self.take()
                values.append(self.string())
            self.expect("]")
            return ast.StrTest(subject, "in", tuple(values))
        for op in ("==", "!=", "matches"):
            if self.at(op):
                self.take()
                return ast.StrTest(subject, op, (self.string(),))
        raise self.error(f"after {subject!r} expected ==, !=, in or matches")


def parse(source: str, source_name: str = "<policy>") -> ast.Policy:
    """Parse and type-check a policy; raises :class:`PolicySyntaxError` naming line and column."""
    return _Parser(source, source_name).policy()
