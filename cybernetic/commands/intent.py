"""`cybernetic intent send CAPABILITY --args JSON`: send an intent, print its updates as they come.

It runs the cloud's S1 router in this process with the cloud's configuration (broker login,
link secrets): it learns which gateway owns the capability from the retained announcements,
seals the intent for that gateway's link and prints every update until ``done`` (exit 0) or
``failed`` (exit 1; 3 when it timed out; 4 when no gateway offers the capability).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from amcp.link import CloudLinks, secrets_in_dir
from amcp.runtime.supervisor import ChildContext
from amcp.wire.messages import IntentUpdate
from cloud.config import CloudConfig
from cloud.s1 import CloudS1, CloudS1Settings
from cybernetic.cli import load_config

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_UNKNOWN = 0, 1, 2, 3, 4


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("intent", help="send intents to S1")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    send = verbs.add_parser("send", help="send an intent to the gateway owning CAPABILITY")
    send.add_argument("capability", metavar="CAPABILITY")
    send.add_argument("--args", default="{}", help="the intent's args as a JSON object")
    send.add_argument(
        "-c", "--config", type=Path, default=Path("/etc/cybernetic/cloud.toml"), help="cloud.toml"
    )
    send.add_argument("--timeout", type=float, default=None, help="seconds (gateway enforces)")
    send.add_argument("--gateway", default=None, help="send to this gateway, skip the registry")
    send.add_argument(
        "--wait", type=float, default=5.0, help="seconds to wait for the capability to be known"
    )
    send.add_argument("--text", default="", help="the user's words, kept with the intent")
    send.add_argument("--json", action="store_true", help="one JSON object per update")
    send.set_defaults(handler=_send)


def _format(update: IntentUpdate) -> str:
    match update.state:
        case "running" if update.progress is not None:
            return f"running   {update.progress:.0%}"
        case "result" | "done":
            return f"{update.state:<9} {json.dumps(update.data, sort_keys=True)}"
        case "failed":
            return f"failed    {update.code or 'error'}: {update.error}"
        case _:
            return update.state


def _send(args: argparse.Namespace) -> int:
    try:
        intent_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        print(f"--args is not JSON: {exc}")
        return EXIT_USAGE
    if not isinstance(intent_args, dict):
        print("--args must be a JSON object")
        return EXIT_USAGE
    config = load_config(args.config, CloudConfig)
    if config is None:
        return EXIT_USAGE
    return asyncio.run(_run(config, args, intent_args))


async def _run(config: CloudConfig, args: argparse.Namespace, intent_args: dict[str, Any]) -> int:
    base = getattr(config, "s1", None)
    settings = msgspec.structs.replace(
        base if isinstance(base, CloudS1Settings) else CloudS1Settings(),
        client_id=f"cybernetic-intent-{os.urandom(4).hex()}",
        discovery_wait=args.wait,
    )
    links = CloudLinks(
        secrets_in_dir(Path(config.links.secrets_dir)),
        None,
        cloud=config.cloud.id,
        window_s=config.links.clock_window,
    )
    with tempfile.TemporaryDirectory(prefix="cybernetic-intent-") as tmp:
        cloud = CloudS1(
            settings, Path(tmp) / "registry.sqlite3", links, broker=config.broker, site="cli"
        )
        ctx = ChildContext("intent")
        runner = asyncio.create_task(cloud.run(ctx))
        try:
            ready = asyncio.create_task(ctx.wait_ready())
            await asyncio.wait({runner, ready}, timeout=10, return_when="FIRST_COMPLETED")
            if not ctx.is_ready:
                ready.cancel()
                print(f"cannot reach the cloud broker at {config.broker.host}:{config.broker.port}")
                return EXIT_FAILED
            return await _stream(cloud, args, intent_args)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            links.close()


async def _stream(cloud: CloudS1, args: argparse.Namespace, intent_args: dict[str, Any]) -> int:
    last: IntentUpdate | None = None
    async for routed in cloud.router.stream(
        args.capability, intent_args, args.timeout, text=args.text, gateway=args.gateway
    ):
        update = last = routed.update
        if args.json:
            record = msgspec.to_builtins(update)
            record["gateway"] = routed.gateway
            record["correlation_id"] = routed.correlation_id
            print(json.dumps(record, sort_keys=True), flush=True)
            continue
        if update.state == "accepted":
            print(f"intent {update.intent_id} -> gateway {routed.gateway}", flush=True)
        print(_format(update), flush=True)
    if last is None or last.state == "done":
        return EXIT_DONE
    if last.code == "timeout":
        return EXIT_TIMEOUT
    if last.code == "unknown_capability":
        return EXIT_UNKNOWN
    return EXIT_FAILED
