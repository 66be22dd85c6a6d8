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
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("CYBERNETIC_PKI_DIR", "state/pki")),
        help="PKI directory (default: $CYBERNETIC_PKI_DIR or ./state/pki)",
    )
    parser.add_argument("--owner", help="service user that owns the files (when run as root)")
    verbs = parser.add_subparsers(dest="pki_verb", metavar="VERB", required=True)
    init = verbs.add_parser("init", help="create the fleet root CA and the cloud's node key")
    init.add_argument("--cloud-id", default="cloud", help="the cloud's node id")
    init.set_defaults(handler=_init)
    token = verbs.add_parser("token", help="issue a one-time bootstrap token (printed once)")
    token.add_argument("--expires", type=parse_duration, default=3600.0, metavar="DURATION")
    token.add_argument("--gateway", help="only this gateway id may use the token")
    token.set_defaults(handler=_token)
    server = verbs.add_parser("server-cert", help="key and certificate for the cloud broker")
    server.add_argument("--host", action="append", required=True, help="name or IP (repeat)")
    server.add_argument("--out", type=Path, required=True, help="directory for server.key/.pem")
    server.add_argument("--valid", type=parse_duration, default=365 * 86400.0)
    server.set_defaults(handler=_server_cert)
    lst = verbs.add_parser("list", help="enrolled gateways and outstanding tokens")
    lst.set_defaults(handler=_list)
    rev = verbs.add_parser("revoke", help="revoke a gateway (certificates, link secret)")
    rev.add_argument("gateway")
    rev.set_defaults(handler=_revoke)
    crl = verbs.add_parser("crl", help="re-sign the CRL (do this at least every 30 days)")
    crl.set_defaults(handler=_crl)


def _open(args: argparse.Namespace) -> Enrolment:
    return open_enrolment(args.dir, owner=args.owner)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}")
    return 2


def _init(args: argparse.Namespace) -> int:
    try:
        ca = init_pki(args.dir, cloud_id=args.cloud_id, owner=args.owner)
    except (PkiError, KeyStoreError, OSError, KeyError) as exc:
        return _fail(exc)
    der = ca.certificate().public_bytes(serialization.Encoding.DER)
    print(f"fleet CA created in {args.dir}")
    print(f"root certificate: {ca.cert_path}")
    print(f"root sha256: {hashlib.sha256(der).hexdigest()}")
    return 0


def _token(args: argparse.Namespace) -> int:
    try:
        enrolment = _open(args)
        token = enrolment.issue_token(expires_s=args.expires, gateway=args.gateway)
        enrolment.store.close()
    except (PkiError, KeyStoreError, ValueError) as exc:
        return _fail(exc)
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + args.expires))
    print(f"token id {token.token_id}, expires {expires}, one use")
    print(f"bootstrap token (shown once): {token.text()}")
    return 0


def _server_cert(args: argparse.Namespace) -> int:
    try:
        key, cert = FleetCA(args.dir / "ca", owner=args.owner).issue_server(
            args.host, valid_s=args.valid
        )
    except PkiError as exc:
        return _fail(exc)
    write_secret_file(args.out / "server.key", key, owner=args.owner)
    write_secret_file(args.out / "server.pem", cert, owner=args.owner)
    print(f"wrote {args.out / 'server.key'} and {args.out / 'server.pem'}")
    return 0


def _ms(ms: int | None) -> str:
    return "-" if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _list(args: argparse.Namespace) -> int:
    try:
        enrolment = _open(args)
    except (PkiError, KeyStoreError) as exc:
        return _fail(exc)
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
    try:
        enrolment = _open(args)
        serials = enrolment.revoke(args.gateway)
        enrolment.store.close()
    except (PkiError, KeyStoreError) as exc:
        return _fail(exc)
    print(f"revoked {args.gateway}: {len(serials)} certificate(s), link secret deleted")
    print("reload the cloud broker to apply the CRL: systemctl reload mosquitto (or SIGHUP)")
    return 0


def _crl(args: argparse.Namespace) -> int:
    try:
        path = FleetCA(args.dir / "ca", owner=args.owner).write_crl()
    except PkiError as exc:
        return _fail(exc)
    print(f"wrote {path}")
    return 0
