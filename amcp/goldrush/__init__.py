"""GoldRush: compiled, indexed event-stream patterns (a Python take on Erlang's goldrush).

Typical use::

    rules = PatternSet.compile({"hot": "device == 'd-1' and temp > 90 => alert"},
                               actions={"alert": send_alert})
    rules.handle(event_from_reading(reading))     # matches and runs actions
    rules.counters("hot")                         # input, matched, action runs/time/errors

The modules, lowest first: ``query`` (AST), ``semantics`` (what a test means),
``parse`` (text syntax), ``interpret`` (reference interpreter), ``reduce``, ``codegen``
(compiler), ``index`` (decision index), ``patternset`` (the public set), ``windows`` and
``situations`` (counts over time, patterns over pattern outputs).
"""

from amcp.goldrush.codegen import compile_query
from amcp.goldrush.errors import GoldrushError, ParseError, QueryError
from amcp.goldrush.interpret import matches
from amcp.goldrush.parse import parse, to_text
from amcp.goldrush.patternset import Action, Counters, PatternSet
from amcp.goldrush.query import Query, decode, encode
from amcp.goldrush.reduce import reduce
from amcp.goldrush.semantics import MISSING, event_from_reading

__all__ = [
    "MISSING",
    "Action",
    "Counters",
    "GoldrushError",
    "ParseError",
    "PatternSet",
    "Query",
    "QueryError",
    "compile_query",
    "decode",
    "encode",
    "event_from_reading",
    "matches",
    "parse",
    "reduce",
    "to_text",
]
