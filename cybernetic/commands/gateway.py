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
from amcp.runtime.service import run_daemon
from amcp.runtime.settings import BrokerLink
from amcp.wire.enrol import TokenFormatError
from cybernetic.cli import (
    UNREACHABLE,
    USAGE,
    CliError,
    describe_os_error,
    group_option,
    require_config,
)
from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.enrol import EnrolmentError, EnrolPaths, enrol, renew

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("gateway", help="the edge gateway daemon")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    run = verbs.add_parser("run", help="run the gateway in the foreground (systemd: Type=notify)")
    run.set_defaults(handler=_run)
    group_option(
        parser,
        [run],
        "-c",
        "--config",
        required=True,
        type=Path,
        metavar="FILE",
        help="the gateway's gateway.toml",
    )
    _register_enrol(verbs)


def _run(args: argparse.Namespace) -> int:
    config = require_config(args.config, GatewayConfig)
    return run_daemon(
        "gateway",
        config.gateway.id,
        args.config,
        config.log,
        lambda: Gateway(config, config_path=args.config),
    )


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _register_enrol(verbs: Any) -> None:
    enrol = verbs.add_parser("enrol", help="join the fleet with a one-time bootstrap token")
    enrol.add_argument("--id", required=True, help="this gateway's id (its certificate's name)")
    enrol.add_argument("--dir", type=Path, required=True, metavar="DIR", help="enrolment directory")
    enrol.add_argument(
        "--broker", type=_host_port, required=True, metavar="HOST:PORT", help="cloud broker"
    )
    enrol.add_argument("--username", default="enrol", help="pre-enrolment account")
    enrol.add_argument(
        "--password-file", type=Path, metavar="FILE", help="that account's password file"
    )
    enrol.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file with the bootstrap token (default: stdin)",
    )
    enrol.add_argument("--cloud-id", default="cloud", help="the cloud's node id")
    enrol.add_argument("--owner", help="service user that owns the files (when run as root)")
    enrol.set_defaults(handler=_enrol)
    renew = verbs.add_parser("renew", help="renew the certificate and link secret now")
    renew.add_argument("--dir", type=Path, required=True, metavar="DIR", help="enrolment directory")
    renew.add_argument(
        "--broker", type=_host_port, required=True, metavar="HOST:PORT", help="TLS listener"
    )
    renew.add_argument("--no-certificate", action="store_true", help="keep the certificate")
    renew.add_argument("--no-link", action="store_true", help="keep the link secret")
    renew.add_argument("--owner", help="service user that owns the files (when run as root)")
    renew.set_defaults(handler=_renew)


def _check_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise CliError(f"--dir {path} is a file: give the enrolment directory")


def _read_token(args: argparse.Namespace) -> str:
    if args.token_file is None:
        return sys.stdin.readline().strip()
    try:
        return str(args.token_file.read_text().strip())
    except OSError as exc:
        raise CliError(describe_os_error(exc, "--token-file")) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"--token-file {args.token_file} holds no bootstrap token") from exc


def _failed(exc: Exception) -> CliError:
    """Exit 3 when the cloud was not reached or did not answer, else 2 (refused)."""
    text = str(exc)
    unreachable = text.startswith(("cannot reach", "no answer"))
    return CliError(text, UNREACHABLE if unreachable else USAGE)


def _enrol(args: argparse.Namespace) -> int:
    _check_dir(args.dir)
    if args.password_file is not None and not args.password_file.is_file():
        raise CliError(f"--password-file {args.password_file} is missing or not a file")
    token = _read_token(args)
    if not token:
        raise CliError("no bootstrap token: give --token-file FILE or the token on stdin")
    setup_logging("info")
    host, port = args.broker
    password_file = "" if args.password_file is None else str(args.password_file)
    link = BrokerLink(host=host, port=port, username=args.username, password_file=password_file)
    try:
        state = asyncio.run(
            enrol(link, token, args.id, args.dir, cloud=args.cloud_id, owner=args.owner)
        )
    except (EnrolmentError, TokenFormatError) as exc:
        raise _failed(exc) from exc
    except OSError as exc:
        raise CliError(describe_os_error(exc), 1) from exc
    paths = EnrolPaths(args.dir)
    until = time.strftime("%Y-%m-%d", time.gmtime(state.cert_not_after_ms / 1000))
    print(f"enrolled {state.gateway} with cloud {state.cloud!r} (link epoch {state.epoch})")
    print(f"certificate valid until {until}; in gateway.toml:")
    print(f'  [uplink]\n  link_secret_file = "{paths.link_secret}"')
    print(f'  [uplink.broker]\n  ca_file = "{paths.trust_bundle}"')
    print(f'  cert_file = "{paths.client_pem}"')
    return 0


def _renew(args: argparse.Namespace) -> int:
    _check_dir(args.dir)
    if not args.dir.is_dir():
        raise CliError(f"no enrolment directory {args.dir}: enrol first (cybernetic gateway enrol)")
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
    except EnrolmentError as exc:
        raise _failed(exc) from exc
    except OSError as exc:
        raise CliError(describe_os_error(exc), 1) from exc
    print(f"renewed {state.gateway}: link epoch {state.epoch}")
    return 0
