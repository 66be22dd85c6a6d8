"""`cybernetic intent send CAPABILITY --args JSON`: send an intent, print its updates as they come.

It runs the cloud's S1 router in this process with the cloud's configuration (broker login,
link secrets): it learns which gateway owns the capability from the retained announcements,
seals the intent for that gateway's link and prints every update until ``done`` (exit 0) or
``failed`` (exit 1; 3 when it timed out or the broker cannot be reached; 4 when no gateway
offers the capability). The intent says who asks (``--as user:NAME`` or ``service:NAME``,
default ``user:`` and the login name): the gateway applies that principal's quota. Before
connecting it checks the files the configuration names (the
broker's password file and TLS files, the link secrets), so a missing one is named as such.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
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
from cybernetic.cli import CliError, group_option, require_config

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_UNKNOWN = 0, 1, 2, 3, 4
CONNECT_TIMEOUT_S = 10.0


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("intent", help="send intents to S1")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    send = verbs.add_parser("send", help="send an intent to the gateway owning CAPABILITY")
    send.add_argument("capability", metavar="CAPABILITY", help="the capability's name")
    send.add_argument("--args", default="{}", help="the intent's args as a JSON object")
    send.add_argument(
        "--timeout",
        type=_positive,
        default=None,
        help="seconds the intent may take (the gateway enforces it)",
    )
    send.add_argument("--gateway", default=None, help="send to this gateway, skip the registry")
    send.add_argument(
        "--wait",
        type=_positive,
        default=5.0,
        help="seconds to wait for the capability to be known (default 5)",
    )
    send.add_argument("--text", default="", help="the user's words, kept with the intent")
    send.add_argument(
        "--as",
        dest="principal",
        type=_principal,
        default=None,
        metavar="PRINCIPAL",
        help="who asks: user:NAME or service:NAME (a bare NAME is user:NAME; default "
        "user:<login name>); the gateway applies its quota",
    )
    send.add_argument("--zone", default="", help="the zone the intent comes from")
    send.add_argument("--json", action="store_true", help="one JSON object per update")
    send.set_defaults(handler=_send)
    group_option(
        parser,
        [send],
        "-c",
        "--config",
        type=Path,
        default=Path("/etc/cybernetic/cloud.toml"),
        metavar="FILE",
        help="the cloud's cloud.toml: broker login, link secrets "
        "(default /etc/cybernetic/cloud.toml)",
    )


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


PRINCIPAL_KINDS = ("user", "service")


def _principal(text: str) -> str:
    kind, sep, name = text.partition(":")
    if not sep:
        kind, name = "user", text
    if kind not in PRINCIPAL_KINDS or not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(
            f"not a principal: {text!r} (give user:NAME or service:NAME)"
        )
    return f"{kind}:{name}"


def _default_principal() -> str:
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "user:anonymous"


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
        raise CliError(f"--args is not JSON: {exc} (give an object, e.g. '{{\"n\": 3}}')") from exc
    if not isinstance(intent_args, dict):
        raise CliError("--args must be a JSON object, e.g. '{\"n\": 3}'")
    config = require_config(args.config, CloudConfig)
    _check_files(config, args)
    # the router's own log lines ("cannot connect; retrying ...") are not this command's
    # output: what went wrong is said once, by the error it ends with
    logging.getLogger().addHandler(logging.NullHandler())
    return asyncio.run(_run(config, args, intent_args))


def _check_files(config: CloudConfig, args: argparse.Namespace) -> None:
    """Name a missing file the configuration points to (else it looks like a broker outage)."""
    broker = config.broker
    where = f"in {args.config}"
    if not broker.password and broker.password_file:
        try:
            broker.secret()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise CliError(
                f"the broker's password file {broker.password_file} ([broker] password_file "
                f"{where}) cannot be read: {reason}; create it, or fix the path"
            ) from exc
    for field in ("ca_file", "cert_file", "key_file"):
        name = getattr(broker, field)
        if name and not Path(name).is_file():
            raise CliError(
                f"the broker's {field} {name} ([broker] {field} {where}) is missing; "
                "create it, or fix the path"
            )
    secrets = Path(config.links.secrets_dir)
    if not secrets.is_dir():
        raise CliError(
            f"the link secrets directory {secrets} ([links] secrets_dir {where}) is missing; "
            "create it with one secret file per gateway, or fix the path"
        )
    if args.gateway and not (secrets / args.gateway).is_file():
        raise CliError(
            f"no link secret for gateway {args.gateway!r}: {secrets / args.gateway} is missing "
            "(copy the gateway's link secret there, or check --gateway)"
        )


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
            await asyncio.wait(
                {runner, ready}, timeout=CONNECT_TIMEOUT_S, return_when="FIRST_COMPLETED"
            )
            if not ctx.is_ready:
                ready.cancel()
                raise _unreachable(config, runner)
            return await _stream(cloud, args, intent_args)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            links.close()


def _unreachable(config: CloudConfig, runner: asyncio.Task[None]) -> CliError:
    where = f"{config.broker.host}:{config.broker.port}"
    reason = f"no connection within {CONNECT_TIMEOUT_S:g} s"
    if runner.done() and not runner.cancelled() and runner.exception() is not None:
        reason = f"{type(runner.exception()).__name__}: {runner.exception()}"
    return CliError(
        f"cannot reach the cloud broker at {where} ({reason}); is it running, and are "
        "[broker] host, port and login in the configuration right?",
        EXIT_TIMEOUT,
    )


async def _stream(cloud: CloudS1, args: argparse.Namespace, intent_args: dict[str, Any]) -> int:
    last: IntentUpdate | None = None
    async for routed in cloud.router.stream(
        args.capability,
        intent_args,
        args.timeout,
        text=args.text,
        gateway=args.gateway,
        principal=args.principal or _default_principal(),
        zone=args.zone,
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
