"""`cybernetic gateway run -c FILE`: the edge daemon; `gateway enrol` and `gateway renew`: its
place in the fleet (docs/trust.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

from amcp.runtime.logs import setup_logging
from amcp.runtime.service import run_loop
from amcp.runtime.settings import BrokerLink
from amcp.wire.enrol import TokenFormatError
from cybernetic.cli import load_config
from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.enrol import EnrolmentError, EnrolPaths, enrol, renew

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("gateway", help="the edge gateway daemon")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    run = verbs.add_parser("run", help="run the gateway in the foreground (systemd: Type=notify)")
    run.add_argument("-c", "--config", required=True, type=Path, help="gateway.toml")
    run.set_defaults(handler=_run)
    _register_enrol(verbs)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config, GatewayConfig)
    if config is None:
        return 2
    setup_logging(config.log.level)
    try:
        gateway = Gateway(config, config_path=args.config)
    except (OSError, ValueError) as exc:
        log.critical("gateway cannot start", extra={"error": str(exc)})
        return 1
    return run_loop(gateway.serve)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _register_enrol(verbs: Any) -> None:
    enrol = verbs.add_parser("enrol", help="join the fleet with a one-time bootstrap token")
    enrol.add_argument("--id", required=True, help="this gateway's id (its certificate's name)")
    enrol.add_argument("--dir", type=Path, required=True, help="enrolment directory")
    enrol.add_argument(
        "--broker", type=_host_port, required=True, metavar="HOST:PORT", help="cloud broker"
    )
    enrol.add_argument("--username", default="enrol", help="pre-enrolment account")
    enrol.add_argument("--password-file", default="", help="that account's password file")
    enrol.add_argument(
        "--token-file", type=Path, help="file with the bootstrap token (default: stdin)"
    )
    enrol.add_argument("--cloud-id", default="cloud", help="the cloud's node id")
    enrol.add_argument("--owner", help="service user that owns the files (when run as root)")
    enrol.set_defaults(handler=_enrol)
    renew = verbs.add_parser("renew", help="renew the certificate and link secret now")
    renew.add_argument("--dir", type=Path, required=True, help="enrolment directory")
    renew.add_argument(
        "--broker", type=_host_port, required=True, metavar="HOST:PORT", help="TLS listener"
    )
    renew.add_argument("--no-certificate", action="store_true", help="keep the certificate")
    renew.add_argument("--no-link", action="store_true", help="keep the link secret")
    renew.add_argument("--owner", help="service user that owns the files (when run as root)")
    renew.set_defaults(handler=_renew)


def _enrol(args: argparse.Namespace) -> int:
    setup_logging("info")
    token = (args.token_file.read_text() if args.token_file else sys.stdin.readline()).strip()
    host, port = args.broker
    link = BrokerLink(
        host=host, port=port, username=args.username, password_file=args.password_file
    )
    try:
        state = asyncio.run(
            enrol(link, token, args.id, args.dir, cloud=args.cloud_id, owner=args.owner)
        )
    except (EnrolmentError, TokenFormatError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    paths = EnrolPaths(args.dir)
    until = time.strftime("%Y-%m-%d", time.gmtime(state.cert_not_after_ms / 1000))
    print(f"enrolled {state.gateway} with cloud {state.cloud!r} (link epoch {state.epoch})")
    print(f"certificate valid until {until}; in gateway.toml:")
    print(f'  [uplink]\n  link_secret_file = "{paths.link_secret}"')
    print(f'  [uplink.broker]\n  ca_file = "{paths.trust_bundle}"')
    print(f'  cert_file = "{paths.client_pem}"')
    return 0


def _renew(args: argparse.Namespace) -> int:
    setup_logging("info")
    host, port = args.broker
    link = EnrolPaths(args.dir).tls_link(BrokerLink(host=host, port=port))
    try:
        state = asyncio.run(
            renew(
                link,
                args.dir,
                certificate=not args.no_certificate,
                link_secret=not args.no_link,
                owner=args.owner,
            )
        )
    except (EnrolmentError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    print(f"renewed {state.gateway}: link epoch {state.epoch}")
    return 0
