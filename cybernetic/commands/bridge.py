"""`cybernetic bridge browse|cert`: help with field-device mappings (docs/bridge.md).

``browse opc.tcp://host:4840`` lists a machine's variables and methods with their NodeId
strings, ready for a ``[[bridge.devices.points]]`` table. ``cert`` issues the gateway's
OPC-UA application certificate (RSA, for Basic256Sha256) from the fleet CA on the cloud.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from cybernetic.cli import UNREACHABLE, USAGE, CliError, describe_os_error, require_config


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "bridge", help="OPC-UA and Modbus machines: browse a server, issue a certificate"
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    browse = verbs.add_parser("browse", help="list an OPC-UA server's variables and methods")
    browse.add_argument("endpoint", help="the server, opc.tcp://host:port[/path]")
    browse.add_argument("--depth", type=int, default=4, help="object levels to descend (4)")
    browse.add_argument("--timeout", type=float, default=5.0, help="seconds per request (5)")
    browse.add_argument("--json", action="store_true", help="print JSON lines")
    browse.set_defaults(handler=_browse)
    run = verbs.add_parser("run", help="run the bridge alone ([bridge] process = 'separate')")
    run.add_argument(
        "-c", "--config", type=Path, default=Path("/etc/cybernetic/gateway.toml"),
        help="gateway.toml: its [bridge] and [local_broker] (default /etc/cybernetic/gateway.toml)",
    )  # fmt: skip
    run.set_defaults(handler=_run)
    cert = verbs.add_parser("cert", help="issue a gateway's OPC-UA certificate (fleet CA)")
    cert.add_argument("gateway", help="the gateway id (names the application URI)")
    cert.add_argument("--pki-dir", type=Path, default=None, help="the fleet CA directory")
    cert.add_argument("--out", type=Path, required=True, help="directory for the key and cert")
    cert.add_argument("--host", action="append", default=[], help="a hostname or IP (repeat)")
    cert.set_defaults(handler=_cert)


def _browse(args: argparse.Namespace) -> int:
    if not str(args.endpoint).startswith("opc.tcp://"):
        raise CliError(f"not an OPC-UA endpoint: {args.endpoint!r} (opc.tcp://host:port)")
    from asyncua.client.client import Client  # noqa: PLC0415 - only this verb needs asyncua
    from asyncua.ua.uaerrors import UaError  # noqa: PLC0415

    from firmware_bridge.opcua import browse  # noqa: PLC0415

    async def run() -> list[dict[str, Any]]:
        async with asyncio.timeout(args.timeout * 10):
            client = Client(args.endpoint, timeout=args.timeout)
            await client.connect()
            try:
                return await browse(client, depth=args.depth)
            finally:
                await client.disconnect()

    try:
        found = asyncio.run(run())
    except (OSError, TimeoutError, UaError, ConnectionError) as exc:
        raise CliError(
            f"{args.endpoint}: cannot browse ({exc or type(exc).__name__})", UNREACHABLE
        ) from exc
    for entry in found:
        if args.json:
            print(json.dumps(entry))
        else:
            print(f"{entry['node']:<40} {entry['type']:<10} {entry['path']}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from amcp.runtime.service import run_daemon  # noqa: PLC0415
    from gateway.bridge import Bridge  # noqa: PLC0415
    from gateway.config import GatewayConfig  # noqa: PLC0415

    config = require_config(args.config, GatewayConfig)
    if not config.bridge.devices:
        raise CliError(f"{args.config}: [bridge] lists no devices (docs/bridge.md)")
    return run_daemon(
        "bridge",
        config.gateway.id,
        args.config,
        config.log,
        lambda: Bridge(config.bridge, config.local_broker, client_id=f"{config.gateway.id}-bridge"),
    )


def _cert(args: argparse.Namespace) -> int:
    from amcp.crypto.pki import FleetCA, PkiError, write_secret_file  # noqa: PLC0415
    from firmware_bridge.certs import application_uri_for, issue_opcua  # noqa: PLC0415

    pki = args.pki_dir or Path(os.environ.get("CYBERNETIC_PKI_DIR", "state/pki"))
    uri = application_uri_for(args.gateway)
    try:
        key, cert = issue_opcua(FleetCA(pki), uri, args.host or ["localhost"])
        args.out.mkdir(parents=True, exist_ok=True)
        write_secret_file(args.out / "bridge-key.pem", key)
        (args.out / "bridge.pem").write_bytes(cert)
    except PkiError as exc:
        raise CliError(str(exc), USAGE) from exc
    except OSError as exc:
        raise CliError(describe_os_error(exc, str(args.out)), USAGE) from exc
    print(f"{args.out / 'bridge.pem'} ({uri}) and {args.out / 'bridge-key.pem'} written")
    return 0
