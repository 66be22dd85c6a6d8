"""`cybernetic trace ID -c cloud.toml`: why did that happen? The causality graph, printed.

``ID`` is a node of the graph (``event:...``, ``mitigation:...``, ``policy:NAME@VERSION``,
``reading:DEVICE/BOOT/SEQ``); ``--recent [KIND]`` lists the newest nodes to start from. The
trace walks causes by default (``--forward``: what it caused; ``--both``), printed as a tree,
one node per line, or as JSON (``--json``, the shape the API serves). docs/audit.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

import msgspec

from cloud.storage.engine import Tx
from cloud.trace import Direction, Trace, TraceNode, recent, trace
from cybernetic import cloudstore
from cybernetic.cli import OK, USAGE, CliError

KINDS = ("alert", "event", "mitigation")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "trace",
        help="trace an action through the causality graph (what caused it, what it caused)",
        description="Print what led to ID (a reading, event, mitigation or policy bundle), "
        "back to the readings, as a tree; --forward prints what it caused. With --recent, "
        "list the newest nodes to start from.",
    )
    parser.add_argument("id", nargs="?", metavar="ID", help="a node id (see --recent)")
    way = parser.add_mutually_exclusive_group()
    way.add_argument("--forward", action="store_true", help="what ID caused, not its causes")
    way.add_argument("--both", action="store_true", help="causes and effects")
    parser.add_argument(
        "--recent",
        nargs="?",
        const="",
        choices=("", *KINDS),
        metavar="KIND",
        help=f"list the newest nodes (of one kind: {', '.join(KINDS)})",
    )
    parser.add_argument("--depth", type=int, default=32, metavar="N", help="at most N steps")
    parser.add_argument("--json", action="store_true", help="print the trace as JSON")
    parser.add_argument(
        "-c", "--config", required=True, type=Path, metavar="FILE", help="the cloud's cloud.toml"
    )
    parser.set_defaults(handler=_trace)


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def describe(node: TraceNode) -> str:
    """One line for a node: what it is, where and when."""
    a = node.attrs
    match node.kind:
        case "alert" | "event":
            extra = {k: v for k, v in a.get("attrs", {}).items() if k != "values"}
            return (
                f"{node.kind} {a.get('name')} {a.get('severity')} on {a.get('gateway')} "
                f"from {a.get('source')} at {_when(node.ts_ms)} {json.dumps(extra, default=str)}"
            )
        case "reading":
            if "values" not in a:
                return node.label
            return (
                f"reading {a['device']} #{a['seq']} on {a['gateway']} at {_when(node.ts_ms)} "
                f"{json.dumps(a['values'], default=str)}"
            )
        case "mitigation":
            return f"mitigation {a.get('action')}: {a.get('reason')}"
        case _:
            return node.label


def _print_tree(t: Trace, forward: bool) -> None:
    nodes = {n.id: n for n in t.nodes}
    links: dict[str, list[tuple[str, str]]] = {}
    for e in t.edges:
        if forward:
            links.setdefault(e.src, []).append((e.kind, e.dst))
        else:
            links.setdefault(e.dst, []).append((e.kind, e.src))
    seen: set[str] = set()

    def show(node_id: str, prefix: str, how: str) -> None:
        node = nodes[node_id]
        again = " (above)" if node_id in seen else ""
        print(f"{prefix}{how}{node_id}  {describe(node)}{again}")
        if again:
            return
        seen.add(node_id)
        for kind, other in links.get(node_id, []):
            word = f"{kind} -> " if forward else f"<- {kind} "
            show(other, prefix + "    ", word)

    show(t.root, "", "")


def _trace(args: argparse.Namespace) -> int:
    if args.depth < 1:
        raise CliError("--depth must be at least 1")
    if args.recent is not None:
        found = cloudstore.read(args.config, lambda tx, _s: recent(tx, args.recent or None))
        for node in found:
            print(f"{node.id}  {describe(node)}")
        if not found:
            print("no node yet: a rule event, an alert or a policy bundle applied makes one")
        return OK
    if not args.id:
        raise CliError("give an ID to trace, or --recent to list where to start", USAGE)
    direction: Direction = "both" if args.both else "forward" if args.forward else "back"

    def walk(tx: Tx, _state: Path) -> Trace | None:
        return trace(tx, args.id, direction=direction, depth=args.depth)

    result = cloudstore.read(args.config, walk)
    if result is None:
        raise CliError(f"{args.id}: no such node in the causality graph (see --recent)")
    if args.json:
        print(msgspec.json.encode(result).decode())
        return OK
    _print_tree(result, forward=direction == "forward")
    if direction == "both":
        print("what it led to:")
        _print_tree(result, forward=True)
    if result.truncated:
        print("(cut: more nodes than shown; use --depth or start from another node)")
    return OK
