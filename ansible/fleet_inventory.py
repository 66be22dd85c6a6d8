#!/usr/bin/env python3
"""Ansible dynamic inventory: the gateways in the cloud's fleet table.

``ansible-playbook -i fleet_inventory.py rollout.yml`` (with a static inventory for the cloud
host beside it: ``-i inventory/hosts.yml -i fleet_inventory.py``). Reads the running cloud's
``/status`` (the fleet table of signed heartbeats, as ``cybernetic fleet status`` does) and
lists every gateway in it in group ``cybernetic_gateways`` and in ``fleet_alive``,
``fleet_late`` or ``fleet_lost``; a gateway's host variables are ``gateway_id`` and its
row (``cybernetic_fleet_state``, ``_version``, ``_last_seen_age_s``, ``_outbox_rows``).
Only the Python standard library is used, so it runs anywhere Ansible does.

Environment:
  CYBERNETIC_CLOUD_STATUS_URL   the cloud's /status (default http://127.0.0.1:9465/status;
                                the cloud serves it on its [metrics] listen address)
  CYBERNETIC_FLEET_HOST_PATTERN how Ansible reaches a gateway: ``{id}`` replaced by its id
                                (default ``{id}``, i.e. the gateway id is a resolvable name)

Exit 1 with one line on stderr when the cloud does not answer or answers something else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9465/status"
STATES = ("alive", "late", "lost")


class InventoryError(Exception):
    """The fleet table could not be read."""


def fetch_status(url: str, timeout: float = 10.0) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise InventoryError(f"CYBERNETIC_CLOUD_STATUS_URL must be an http(s) URL, not {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - checked above
            body = answer.read()
    except (urllib.error.URLError, OSError) as exc:
        raise InventoryError(f"no answer from the cloud at {url}: {exc}") from exc
    try:
        status = json.loads(body)
    except ValueError as exc:
        raise InventoryError(f"{url} did not answer JSON: {exc}") from exc
    if not isinstance(status, dict) or not isinstance(status.get("fleet"), dict):
        raise InventoryError(f"{url} has no fleet table: is it a cloud's /status?")
    return status


def inventory(status: dict[str, Any], host_pattern: str) -> dict[str, Any]:
    """The ``--list`` answer for a cloud's /status report."""
    rows: dict[str, Any] = status["fleet"].get("gateways") or {}
    groups: dict[str, Any] = {f"fleet_{state}": {"hosts": []} for state in STATES}
    hostvars: dict[str, Any] = {}
    for gateway in sorted(rows):
        row = rows[gateway] if isinstance(rows[gateway], dict) else {}
        state = str(row.get("state", "lost"))
        groups.setdefault(f"fleet_{state}", {"hosts": []})["hosts"].append(gateway)
        outbox = row.get("outbox") if isinstance(row.get("outbox"), dict) else {}
        hostvars[gateway] = {
            "ansible_host": host_pattern.replace("{id}", gateway),
            "gateway_id": gateway,
            "cybernetic_fleet_state": state,
            "cybernetic_fleet_version": row.get("version"),
            "cybernetic_fleet_last_seen_age_s": row.get("last_seen_age_s"),
            "cybernetic_fleet_outbox_rows": (outbox or {}).get("rows"),
        }
    return {
        "cybernetic_gateways": {"hosts": sorted(rows), "children": sorted(groups)},
        **groups,
        "_meta": {"hostvars": hostvars},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ansible inventory from the cloud's fleet table")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="every gateway, grouped by state")
    mode.add_argument("--host", metavar="ID", help="one gateway's variables")
    args = parser.parse_args(argv)
    url = os.environ.get("CYBERNETIC_CLOUD_STATUS_URL", DEFAULT_URL)
    pattern = os.environ.get("CYBERNETIC_FLEET_HOST_PATTERN", "{id}")
    try:
        found = inventory(fetch_status(url), pattern)
    except InventoryError as exc:
        sys.stderr.write(f"fleet_inventory: {exc}\n")
        return 1
    answer = found if args.list else found["_meta"]["hostvars"].get(args.host, {})
    sys.stdout.write(json.dumps(answer, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
