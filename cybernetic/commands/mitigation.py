"""`cybernetic mitigation list|show -c cloud.toml`: what S4 proposes for the fleet's alerts.

The cloud's ``mitigations`` child answers every alert with a proposal (``cloud.mitigations``);
``list`` shows the newest, ``show ID`` one in full (``--source`` prints only its policy, ready
for ``cybernetic policy push FILE --cause ID``). docs/audit.md, "Causality".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cloud.mitigations import proposals
from cloud.storage.engine import Tx
from cloud.trace import resolve
from cybernetic import cloudstore
from cybernetic.cli import OK, CliError, group_option


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "mitigation", help="the mitigations S4 proposed for alerts (review, then push)"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    lst = verbs.add_parser("list", help="the newest proposals, with how many alerts each answers")
    lst.add_argument("--limit", type=int, default=50, metavar="N", help="at most N proposals")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    lst.set_defaults(handler=_list)
    show = verbs.add_parser("show", help="one proposal in full")
    show.add_argument("id", metavar="ID", help="mitigation:... (from `mitigation list`)")
    show.add_argument("--source", action="store_true", help="print only its policy source")
    show.set_defaults(handler=_show)
    group_option(
        parser,
        [lst, show],
        "-c",
        "--config",
        required=True,
        type=Path,
        metavar="FILE",
        help="the cloud's cloud.toml",
    )


def _list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    found = cloudstore.read(args.config, lambda tx, _s: proposals(tx, args.limit))
    for pid, data, alerts in found:
        if args.json:
            print(json.dumps({"id": pid, "alerts": alerts, **data}, default=str))
            continue
        policy = "policy ready" if data.get("policy") else "no policy"
        print(f"{pid}  {data.get('action')}  {alerts} alert(s)  {policy}  {data.get('reason')}")
    if not found and not args.json:
        print("no proposal yet: one is made for each alert a gateway raises")
    return OK


def _show(args: argparse.Namespace) -> int:
    def one(tx: Tx, _state: Path) -> dict[str, Any] | None:
        node = resolve(tx, args.id)
        return node.attrs if node is not None and node.kind == "mitigation" else None

    data = cloudstore.read(args.config, one)
    if data is None:
        raise CliError(f"{args.id}: no such mitigation (see `cybernetic mitigation list`)")
    if args.source:
        if not data.get("policy"):
            raise CliError(f"{args.id}: proposes {data.get('action')}, with no policy to push")
        print(data["policy"], end="" if str(data["policy"]).endswith("\n") else "\n")
        return OK
    print(json.dumps({"id": args.id, **data}, indent=2, default=str))
    return OK
