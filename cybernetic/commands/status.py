"""`cybernetic status -c FILE`: what a running gateway or cloud says about itself.

The daemon serves its report on its operations endpoint (``[metrics] listen``, path
``/status``, docs/operations.md); this command reads the configuration to find it, asks, and
prints a summary (or the document with ``--json``). Exit 0 when the daemon answers and is
ready, 1 when it answers and is not ready (the failing checks are printed), 3 when it does
not answer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx

from amcp.runtime.metrics import parse_listen
from cloud.config import CloudConfig
from cybernetic.cli import FAILED, OK, UNREACHABLE, CliError, require_config
from cybernetic.commands.config import guess_kind
from gateway.config import GatewayConfig

TIMEOUT_S = 5.0


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "status", help="ask a running gateway or cloud how it is (links, outbox, sync, health)"
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        default=Path("/etc/cybernetic/gateway.toml"),
        help="the daemon's gateway.toml or cloud.toml (default /etc/cybernetic/gateway.toml)",
    )
    parser.add_argument("--json", action="store_true", help="print the daemon's report as JSON")
    parser.set_defaults(handler=_status)


def _endpoint(path: Path) -> str:
    config: GatewayConfig | CloudConfig
    if guess_kind(path) == "cloud":
        config = require_config(path, CloudConfig)
    else:
        config = require_config(path, GatewayConfig)
    if not config.metrics.enabled:
        raise CliError(
            f"{path}: [metrics] enabled = false, so the daemon serves no status; enable it"
        )
    host, port = parse_listen(config.metrics.listen)
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reading the config, not binding
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/status"


def _status(args: argparse.Namespace) -> int:
    url = _endpoint(args.config)
    try:
        answer = httpx.get(url, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise CliError(
            f"no answer from {url} ({type(exc).__name__}): is the daemon running?", UNREACHABLE
        ) from None
    if answer.status_code != httpx.codes.OK:
        raise CliError(f"{url} answered {answer.status_code}: {answer.text.strip()[:200]}", FAILED)
    report = answer.json()
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("\n".join(summary(report)))
    return OK if report.get("ready") else FAILED


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _restarts(tree: list[dict[str, Any]]) -> list[str]:
    out = []
    for child in tree:
        if child["restarts"] or child["state"] != "running":
            out.append(f"{child['name']} {child['state']} (restarts {child['restarts']})")
        out += _restarts(child["children"])
    return out


def summary(r: dict[str, Any]) -> list[str]:
    """The report as a few lines a person reads at a glance."""
    lines = [
        f"{r['component']} {r['node_id']}  version {r['version']}  up {r['uptime_s']:.0f} s  "
        + ("READY" if r.get("ready") else "NOT READY"),
    ]
    lines += [
        f"  check {name}: {'ok' if c['ok'] else 'FAILING'} ({c['detail']})"
        for name, c in sorted(r.get("checks", {}).items())
    ]
    sessions = r.get("sessions", {})
    lines.append(
        "  links: "
        + ", ".join(f"{name} {'up' if up else 'DOWN'}" for name, up in sorted(sessions.items()))
    )
    if "outbox" in r:
        o = r["outbox"]
        age = "empty" if o["oldest_age_s"] is None else f"oldest {o['oldest_age_s']:.0f} s"
        lines.append(
            f"  outbox: {o['rows']} rows, {o['bytes']} bytes, {age}, "
            f"{o['batches_in_flight']} batches in flight"
            + (", DISK FULL (ingest paused)" if o["storage_full"] else "")
        )
        lines.append(f"  uplink: lag {r['uplink']['lag_s']:.2f} s")
    if "ingest" in r and "stored_readings" in r["ingest"]:
        i = r["ingest"]
        lines.append(
            f"  ingest: {i['batches']} batches, {i['stored_readings']} readings stored, "
            f"{i['duplicate_readings']} duplicates dropped"
        )
    s = r.get("sync", {})
    if s.get("enabled"):
        lines.append(f"  sync: last frame {_age(s.get('last_received_age_s'))}")
    policy = r.get("policy")
    if policy:
        lines.append(
            f"  policy: {policy['policy']} v{policy['version']} "
            f"(flagged {policy['flagged']}, denied {policy['denied']}, faults {policy['faults']})"
        )
    elif "policy" in r:
        lines.append("  policy: none")
    if "patterns" in r:
        p = r["patterns"]
        lines.append(f"  patterns: {p['rules']} rules (generation {p['generation']})")
    if "limits" in r:
        lim = r["limits"]
        lines.append(
            f"  limits from the cloud: {len(lim['in_force'])} in force "
            f"({lim['refused']} rows refused)"
        )
    if "fleet" in r:
        counts = r["fleet"].get("counts", {})
        lines.append(
            "  fleet: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            if counts
            else "  fleet: no gateway heard from yet"
        )
    if "storage" in r:
        st = r["storage"]
        state = "" if st.get("reachable", True) else " (unreachable: ingest waits)"
        lines.append(f"  storage: {st['engine']} at {st['at']}{state}")
    if "audit" in r:
        a = r["audit"]
        lines.append(f"  audit log: {a['entries']} entries, {a['findings']} findings")
    trouble = _restarts(r.get("supervisor", []))
    lines.append("  parts: " + ("; ".join(trouble) if trouble else "all running, no restarts"))
    return lines
