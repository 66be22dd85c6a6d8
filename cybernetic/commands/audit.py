"""`cybernetic audit verify|show -c cloud.toml`: the cloud's audit log, checked and listed.

Both read the cloud store ``[storage]`` names (SQLite or PostgreSQL), read-only, beside a
running cloud. ``verify`` exits 0 when the log is sound, 1 with one line per problem (where,
what was expected, what was found); the findings recorded at ingest (what gateways sent wrong)
are listed either way. docs/audit.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from cloud.audit_verify import Report, audit_keys, verify
from cloud.storage.engine import Tx
from cybernetic import cloudstore
from cybernetic.cli import FAILED, OK, CliError, group_option


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "audit", help="the cloud's audit log: verify it, show its entries"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser(
        "verify",
        help="check every entry, gateway chain, tree head and signature of the log",
        description="Rebuild the log from what is stored and check it: each entry's hash, each "
        "gateway's chain, every tree head's root, signature and consistency with the one "
        "before. Exit 1 with one line per problem.",
    )
    check.add_argument("--gateway", metavar="ID", help="only this gateway's chain")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=_verify)
    show = verbs.add_parser("show", help="list audit entries, newest last")
    show.add_argument("--gateway", metavar="ID", help="only this gateway's entries")
    show.add_argument("--kind", help="only entries of this kind (e.g. s2.limits)")
    show.add_argument("--actor", help="only entries by this actor")
    show.add_argument(
        "--since", metavar="TIME", help="only entries at or after this ISO time (UTC)"
    )
    show.add_argument("--until", metavar="TIME", help="only entries before this ISO time (UTC)")
    show.add_argument("--limit", type=int, default=100, metavar="N", help="at most N entries")
    show.set_defaults(handler=_show)
    group_option(
        parser,
        [check, show],
        "-c",
        "--config",
        required=True,
        type=Path,
        metavar="FILE",
        help="the cloud's cloud.toml",
    )


def _read(args: argparse.Namespace, fn: Any) -> Any:
    return cloudstore.read(args.config, fn)


def _verify(args: argparse.Namespace) -> int:
    report: Report = _read(
        args, lambda tx, state: verify(tx, audit_keys(state / "audit-key"), args.gateway)
    )
    if args.json:
        print(
            json.dumps(
                {
                    "entries": report.entries,
                    "heads": report.heads,
                    "gateways": report.gateways,
                    "problems": report.problems,
                    "findings": report.findings,
                }
            )
        )
    else:
        for line in report.problems:
            print(f"problem: {line}")
        for line in report.findings:
            print(f"finding: {line}")
        verdict = "sound" if not report.problems else f"{len(report.problems)} problem(s)"
        print(
            f"audit log {verdict}: {report.entries} entries of {report.gateways} gateway(s), "
            f"{report.heads} signed tree head(s), {len(report.findings)} finding(s) at ingest"
        )
    return OK if not report.problems else FAILED


def _when(flag: str, text: str | None, default: int) -> int:
    """An ISO time (UTC when it names no zone) as Unix ms."""
    if not text:
        return default
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{flag}: not an ISO time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _show(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    since_ms = _when("--since", args.since, 0)
    until_ms = _when("--until", args.until, 2**62)

    def rows(tx: Tx, _state: Path) -> list[tuple[Any, ...]]:
        sql = (
            "SELECT leaf, ts_ms, source, seq, kind, actor, subject, causation "
            "FROM audit_events WHERE ts_ms >= ? AND ts_ms < ?"
        )
        params: list[object] = [since_ms, until_ms]
        for column, value in (("source", args.gateway), ("kind", args.kind), ("actor", args.actor)):
            if value:
                sql += f" AND {column} = ?"
                params.append(value)
        sql += " ORDER BY leaf DESC LIMIT ?"
        params.append(args.limit)
        return list(reversed(tx.execute(sql, params)))

    for leaf, ts, source, seq, kind, actor, subject, causation in _read(args, rows):
        at = dt.datetime.fromtimestamp(ts / 1000, dt.UTC).isoformat(timespec="seconds")
        cause = f"  caused by {causation}" if causation else ""
        print(f"{leaf:>8}  {at}  {source}#{seq}  {kind}  by {actor}  on {subject}{cause}")
    return OK
