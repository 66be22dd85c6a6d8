"""`cybernetic units`: the tree of S1 units of a running gateway.

The gateway writes its unit tree to ``{state_dir}/units.json`` (``[s1] tree_file``) every
``tree_interval`` seconds; this command reads that file, so it needs read access to the state
folder and nothing else (no socket, no port). It says how old the file is: a stale file means
the gateway is stopped or wedged.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cybernetic.cli import FAILED, CliError, require_config
from gateway.config import GatewayConfig
from gateway.s1 import S1Settings, read_tree


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "units", help="show the gateway's tree of S1 units (delegation)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="gateway.toml, to find its state_dir (default /etc/cybernetic/gateway.toml)",
    )
    source.add_argument("--file", type=Path, metavar="FILE", help="the units.json file itself")
    parser.add_argument("--json", action="store_true", help="print the file as JSON")
    parser.set_defaults(handler=_units)


def _tree_file(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    config = require_config(args.config or Path("/etc/cybernetic/gateway.toml"), GatewayConfig)
    s1 = getattr(config, "s1", None)
    name = s1.tree_file if isinstance(s1, S1Settings) else S1Settings().tree_file
    return Path(config.gateway.state_dir) / name


def _line(unit: dict[str, Any]) -> str:
    q, u = unit["quotas"], unit["usage"]
    return (
        f"{unit['name']}  [{unit['state']}]  children {u['children']}/{q['max_children']}"
        f"  rate {q['max_rate']:g}/s (admitted {u['admitted']}, refused {u['refused']})"
        f"  buffer {u['buffered_bytes']}/{q['max_buffer_bytes']} B"
        f"  intents {u['active_intents']}"
        + (f"  error {unit['error']}" if unit.get("error") else "")
    )


def _print(unit: dict[str, Any], prefix: str, last: bool, *, root: bool, out: list[str]) -> None:
    branch = "" if root else ("└── " if last else "├── ")
    out.append(f"{prefix}{branch}{_line(unit)}")
    inner = prefix if root else prefix + ("    " if last else "│   ")
    out.extend(
        f"{inner}    · worker {w['name']} [{w['state']}] restarts {w['restarts']}"
        for w in unit.get("workers", [])
    )
    children = unit.get("children", [])
    for i, child in enumerate(children):
        _print(child, inner, i == len(children) - 1, root=False, out=out)


def _units(args: argparse.Namespace) -> int:
    path = _tree_file(args)
    try:
        data = read_tree(path)
    except FileNotFoundError as exc:
        raise CliError(
            f"{path}: no unit tree (is the gateway running with S1 enabled? it writes the file)",
            FAILED,
        ) from exc
    except IsADirectoryError as exc:
        raise CliError(f"{path} is a directory: give the units.json file", FAILED) from exc
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: unreadable unit tree: {exc}", FAILED) from exc
    if not isinstance(data, dict) or not isinstance(data.get("root"), dict):
        raise CliError(f"{path} is not a unit tree (no root unit): give units.json", FAILED)
    if args.json:
        print(json.dumps(data, indent=1, sort_keys=True))
        return 0
    try:
        lines = _lines(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CliError(f"{path} is not a unit tree ({exc!r} missing or wrong)", FAILED) from exc
    for line in lines:
        print(line)
    return 0


def _lines(data: dict[str, Any]) -> list[str]:
    age = max(0.0, time.time() - float(data.get("written_at", 0)))
    breaker = data.get("breaker", {})
    head = (
        f"gateway {data.get('gateway')}  (written {age:.1f} s ago)"
        f"  max depth {data.get('max_depth')}"
        f"  spawn breaker {'OPEN' if breaker.get('open') else 'closed'}"
        f" (trips {breaker.get('trips', 0)})"
        f"  intents running {len(data.get('intents_running', []))}"
    )
    out = [head]
    _print(data["root"], "", last=True, root=True, out=out)
    return out
