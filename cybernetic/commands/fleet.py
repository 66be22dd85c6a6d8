"""`cybernetic fleet status -c cloud.toml [--json]`: the cloud's fleet table of gateways.

The cloud keeps every gateway's last heartbeat and judges it alive, late or lost
(``cloud.fleet``); the table is the ``fleet`` entry of the cloud's ``/status`` report, which
this command reads as ``cybernetic status`` does (same endpoint, same errors). Exit 0 when
every gateway in the table is alive (or the table is empty), 1 when one is late or lost, 3
when the cloud does not answer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx

from cybernetic.cli import FAILED, OK, UNREACHABLE, CliError, group_option
from cybernetic.commands.config import guess_kind
from cybernetic.commands.status import TIMEOUT_S, _age, _endpoint
from cybernetic.fleet_authoring import register_authoring


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "fleet", help="the fleet as the cloud sees it (gateways alive, late, lost)"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    status = verbs.add_parser(
        "status",
        help="every gateway's last heartbeat and state, from the running cloud's /status",
    )
    status.add_argument("--json", action="store_true", help="print the fleet table as JSON")
    status.set_defaults(handler=_status)
    authoring = register_authoring(verbs)  # limit, desired, zone, applied, marks
    group_option(
        parser,
        [status, *authoring],
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        default=Path("/etc/cybernetic/cloud.toml"),
        help="the cloud's cloud.toml (default /etc/cybernetic/cloud.toml)",
    )


def read_fleet(config: Path) -> dict[str, Any]:
    """The ``fleet`` entry of the running cloud's ``/status`` (CliError when unavailable)."""
    if guess_kind(config) == "gateway":
        raise CliError(f"{config} is a gateway's configuration: the fleet table is the cloud's")
    url = _endpoint(config)
    try:
        answer = httpx.get(url, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise CliError(
            f"no answer from {url} ({type(exc).__name__}): is the cloud running?", UNREACHABLE
        ) from None
    if answer.status_code != httpx.codes.OK:
        raise CliError(f"{url} answered {answer.status_code}: {answer.text.strip()[:200]}", FAILED)
    fleet = answer.json().get("fleet")
    if not isinstance(fleet, dict):
        raise CliError(f"{url} has no fleet table (is it a cloud of this version?)", FAILED)
    return fleet


def _status(args: argparse.Namespace) -> int:
    fleet = read_fleet(args.config)
    if args.json:
        print(json.dumps(fleet, indent=2, sort_keys=True))
    else:
        print("\n".join(summary(fleet)))
    counts = fleet.get("counts", {})
    return FAILED if counts.get("late", 0) or counts.get("lost", 0) else OK


def _outbox(o: dict[str, Any]) -> str:
    age = o.get("oldest_age_s")
    return f"{o['rows']} rows" + ("" if age is None else f", oldest {age:.0f} s")


def _line(name: str, g: dict[str, Any]) -> str:
    policy = g.get("policy")
    return "  ".join(
        [
            f"{name:<16}",
            f"{g['state'].upper() if g['state'] != 'alive' else 'alive':<5}",
            f"seen {_age(g['last_seen_age_s']):<12}",
            f"v{g['version'] or '?':<8}",
            f"up {g['uptime_s']:.0f} s",
            f"outbox {_outbox(g['outbox'])}",
            f"ingest {g['ingest']['rate']:.1f}/s" + (" PAUSED" if g["ingest"]["paused"] else ""),
            f"uplink {'up' if g['uplink']['connected'] else 'DOWN'}",
            f"policy {policy['policy']} v{policy['version']}" if policy else "policy none",
            f"patterns gen {g['patterns']['generation']}",
            f"clock {g['clock_offset_s']:+.3f} s",
        ]
    )


def summary(fleet: dict[str, Any]) -> list[str]:
    """The fleet table as lines a person reads at a glance: lost first, then late, then alive."""
    counts = fleet.get("counts", {})
    gateways: dict[str, dict[str, Any]] = fleet.get("gateways", {})
    head = (
        f"fleet: {len(gateways)} gateways: {counts.get('alive', 0)} alive, "
        f"{counts.get('late', 0)} late, {counts.get('lost', 0)} lost "
        f"(late at phi {fleet.get('late_phi')}, lost at phi {fleet.get('lost_phi')} "
        f"and {fleet.get('min_lost_s')} s of silence)"
    )
    lines = [head]
    order = {"lost": 0, "late": 1, "alive": 2}
    for name, g in sorted(gateways.items(), key=lambda kv: (order.get(kv[1]["state"], 3), kv[0])):
        lines.append(_line(name, g))
    refused = fleet.get("refused") or {}
    if refused:
        lines.append(
            "refused heartbeats: "
            + ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items()))
        )
    if fleet.get("untracked"):
        lines.append(f"untracked heartbeats (table full): {fleet['untracked']}")
    return lines
