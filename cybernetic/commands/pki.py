"""`cybernetic pki init|token|server-cert|list|revoke|crl`: the fleet's trust, on the cloud.

The PKI directory (``--dir``, default ``$CYBERNETIC_PKI_DIR`` or ``./state/pki``) holds the
root CA, the cloud's node key, the enrolment register and the per-gateway link secrets; see
:func:`cloud.enrolment.init_pki`. A bootstrap token is printed once by ``token`` and is never
stored (the register keeps a one-way key derived from it). ``list`` prints ids, dates and
states, never a secret.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from amcp.crypto.keystore import KeyStoreError
from amcp.crypto.pki import FleetCA, PkiError, write_secret_file
from cloud.enrolment import Enrolment, init_pki, open_enrolment
from cybernetic.cli import CliError, describe_os_error, group_option, iso_ms

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``12h`` or ``7d`` in seconds."""
    match = _DURATION.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30m, 12h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("pki", help="fleet CA, enrolment tokens")
    verbs = parser.add_subparsers(dest="pki_verb", metavar="VERB", required=True)
    init = verbs.add_parser("init", help="create the fleet root CA and the cloud's node key")
    init.add_argument("--cloud-id", default="cloud", help="the cloud's node id")
    init.set_defaults(handler=_init)
    token = verbs.add_parser("token", help="issue a one-time bootstrap token (printed once)")
    token.add_argument(
        "--expires",
        type=parse_duration,
        default=3600.0,
        metavar="DURATION",
        help="how long the token may be used: 90s, 30m, 12h, 7d (default 1h)",
    )
    token.add_argument("--gateway", help="only this gateway id may use the token")
    token.set_defaults(handler=_token)
    server = verbs.add_parser("server-cert", help="key and certificate for the cloud broker")
    server.add_argument("--host", action="append", required=True, help="name or IP (repeat)")
    server.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory for server.key/.pem"
    )
    server.add_argument(
        "--valid",
        type=parse_duration,
        default=365 * 86400.0,
        metavar="DURATION",
        help="certificate lifetime: 30d, 12h, ... (default 365d)",
    )
    server.set_defaults(handler=_server_cert)
    lst = verbs.add_parser("list", help="enrolled gateways and outstanding tokens")
    lst.set_defaults(handler=_list)
    rev = verbs.add_parser("revoke", help="revoke a gateway (certificates, link secret)")
    rev.add_argument("gateway", help="the gateway's id (see: cybernetic pki list)")
    rev.set_defaults(handler=_revoke)
    crl = verbs.add_parser("crl", help="re-sign the CRL (do this at least every 30 days)")
    crl.set_defaults(handler=_crl)
    group_option(
        parser,
        verbs.choices.values(),
        "--dir",
        type=Path,
        default=Path(os.environ.get("CYBERNETIC_PKI_DIR", "state/pki")),
        metavar="DIR",
        help="PKI directory (default: $CYBERNETIC_PKI_DIR or ./state/pki)",
    )
    group_option(
        parser,
        verbs.choices.values(),
        "--owner",
        help="service user that owns the files (when run as root)",
    )


def _open(args: argparse.Namespace) -> Enrolment:
    _check_dir(args.dir)
    try:
        return open_enrolment(args.dir, owner=args.owner)
    except (PkiError, KeyStoreError) as exc:
        raise _fail(exc) from exc


def _check_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise CliError(f"{path} is a file, not a PKI directory (give --dir DIR)")


def _fail(exc: Exception) -> CliError:
    if isinstance(exc, OSError):
        return CliError(describe_os_error(exc))
    if isinstance(exc, KeyError):  # an --owner that is not a user
        return CliError(f"no such user {exc.args[0] if exc.args else ''!r} (check --owner)")
    return CliError(str(exc))


def _init(args: argparse.Namespace) -> int:
    _check_dir(args.dir)
    if FleetCA(args.dir / "ca").exists():
        raise CliError(
            f"{args.dir} already holds a fleet CA: nothing changed (give another --dir; a new "
            "CA means every gateway enrols again)"
        )
    try:
        ca = init_pki(args.dir, cloud_id=args.cloud_id, owner=args.owner)
    except (PkiError, KeyStoreError, OSError, KeyError) as exc:
        raise _fail(exc) from exc
    der = ca.certificate().public_bytes(serialization.Encoding.DER)
    print(f"fleet CA created in {args.dir}")
    print(f"root certificate: {ca.cert_path}")
    print(f"root sha256: {hashlib.sha256(der).hexdigest()}")
    return 0


def _token(args: argparse.Namespace) -> int:
    enrolment = _open(args)
    try:
        token = enrolment.issue_token(expires_s=args.expires, gateway=args.gateway)
    except (PkiError, KeyStoreError, ValueError, OSError) as exc:
        raise _fail(exc) from exc
    finally:
        enrolment.store.close()
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + args.expires))
    print(f"token id {token.token_id}, expires {expires}, one use")
    print(f"bootstrap token (shown once): {token.text()}")
    return 0


def _server_cert(args: argparse.Namespace) -> int:
    _check_dir(args.dir)
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} is a file: give the directory for server.key/.pem")
    ca = FleetCA(args.dir / "ca")  # --owner is the server key's; the CA's register keeps its own
    if not ca.exists():
        raise CliError(f"no fleet CA in {args.dir} (run `cybernetic pki init`, or give --dir)")
    try:
        key, cert = ca.issue_server(args.host, valid_s=args.valid)
        write_secret_file(args.out / "server.key", key, owner=args.owner)
        write_secret_file(args.out / "server.pem", cert, owner=args.owner)
    except (PkiError, OSError, KeyError, ValueError) as exc:
        raise _fail(exc) from exc
    print(f"wrote {args.out / 'server.key'} and {args.out / 'server.pem'}")
    return 0


def _ms(ms: int | None) -> str:
    return "-" if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _list(args: argparse.Namespace) -> int:
    enrolment = _open(args)
    print("gateways:")
    for g in enrolment.store.gateways():
        state = "active" if g.active else f"revoked {_ms(g.revoked_ms)}"
        print(
            f"  {g.gateway}  {state}  epoch {g.epoch}  cert {g.cert_serial[:16]}"
            f" until {_ms(g.cert_not_after_ms)}"
        )
    print("tokens:")
    for t in enrolment.store.tokens():
        used = f"used {_ms(t.used_ms)}" if t.used_ms else f"expires {_ms(t.expires_ms)}"
        print(f"  {t.token_id}  {t.gateway or '(any gateway)'}  {used}")
    enrolment.store.close()
    return 0


def _revoke(args: argparse.Namespace) -> int:
    enrolment = _open(args)
    try:
        record = enrolment.store.gateway(args.gateway)
        issued = [c for c in enrolment.ca.issued() if c.subject == args.gateway]
        if record is None and not issued:
            bound = [t for t in enrolment.store.tokens() if t.gateway == args.gateway]
            why = " (only an enrolment token is bound to it)" if bound else ""
            raise CliError(
                f"gateway {args.gateway!r} is not enrolled in {args.dir}{why}: nothing revoked "
                "(see: cybernetic pki list)"
            )
        if record is not None and not record.active and all(c.revoked_ms for c in issued):
            print(f"{args.gateway} was revoked already, at {iso_ms(record.revoked_ms)}")
            return 0
        serials = enrolment.revoke(args.gateway)
    except (PkiError, KeyStoreError, OSError) as exc:
        raise _fail(exc) from exc
    finally:
        enrolment.store.close()
    print(f"revoked {args.gateway}: {len(serials)} certificate(s), link secret deleted")
    print("reload the cloud broker to apply the CRL: systemctl reload mosquitto (or SIGHUP)")
    return 0


def _crl(args: argparse.Namespace) -> int:
    _check_dir(args.dir)
    ca = FleetCA(args.dir / "ca", owner=args.owner)
    if not ca.exists():
        raise CliError(f"no fleet CA in {args.dir} (run `cybernetic pki init`, or give --dir)")
    try:
        path = ca.write_crl()
    except (PkiError, OSError, KeyError) as exc:
        raise _fail(exc) from exc
    print(f"wrote {path}")
    return 0
