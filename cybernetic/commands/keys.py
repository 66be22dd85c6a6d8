"""`cybernetic keys gen|show|rotate|revoke`: a node's Ed25519 signing keys.

Keys live in a key directory (``--dir``, default ``$CYBERNETIC_KEY_DIR`` or ``./state/keys``);
see :mod:`amcp.crypto.keystore` for the layout. ``keyring.json`` holds only public halves and
is what a peer imports to trust this node until enrolment (issue #5) distributes keys.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from amcp.crypto.keys import now_ms
from amcp.crypto.keystore import KeyStore, KeyStoreError
from cybernetic.cli import CliError, describe_os_error, group_option

DEFAULT_OVERLAP_S = 24 * 3600.0


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("keys", help="manage node signing keys")
    verbs = parser.add_subparsers(dest="keys_verb", metavar="VERB", required=True)
    gen = verbs.add_parser("gen", help="create this node's first key")
    gen.add_argument("--node", required=True, help="node id (the envelope source)")
    gen.add_argument("--force", action="store_true", help="replace an existing identity")
    gen.set_defaults(handler=_gen)
    show = verbs.add_parser("show", help="list keys and their status")
    show.add_argument("--json", action="store_true", help="one JSON object on stdout")
    show.set_defaults(handler=_show)
    rot = verbs.add_parser("rotate", help="new active key; the old one verifies for --overlap")
    rot.add_argument(
        "--overlap",
        type=_seconds,
        default=DEFAULT_OVERLAP_S,
        metavar="SECONDS",
        help="how long the old key still verifies (default 86400: a day)",
    )
    rot.set_defaults(handler=_rotate)
    rev = verbs.add_parser("revoke", help="revoke a (non-active) key now")
    rev.add_argument("key_id", help="the key's id (see: cybernetic keys show)")
    rev.set_defaults(handler=_revoke)
    group_option(
        parser,
        verbs.choices.values(),
        "--dir",
        type=Path,
        default=Path(os.environ.get("CYBERNETIC_KEY_DIR", "state/keys")),
        metavar="DIR",
        help="key directory (default: $CYBERNETIC_KEY_DIR or ./state/keys)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds >= 0: {text!r}")
    return value


def _store(args: argparse.Namespace) -> KeyStore:
    if args.dir.exists() and not args.dir.is_dir():
        raise CliError(f"--dir {args.dir} is a file: give the key directory")
    return KeyStore(args.dir)


def _fail(exc: KeyStoreError | OSError) -> CliError:
    if isinstance(exc, OSError):
        return CliError(describe_os_error(exc, "key directory"))
    return CliError(str(exc))


def _gen(args: argparse.Namespace) -> int:
    try:
        signer = _store(args).generate(args.node, force=args.force)
    except (KeyStoreError, OSError) as exc:
        raise _fail(exc) from exc
    print(f"generated {signer.key_id} for node {args.node} in {args.dir}")
    return 0


def _show(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        ident = store.identity()
        entries = store.keyring().entries()
    except (KeyStoreError, OSError) as exc:
        raise _fail(exc) from exc
    now = now_ms()
    rows = [
        {
            "key_id": e.key_id,
            "alg": e.alg,
            "owner": e.owner,
            "status": e.status(now),
            "active": e.key_id == ident.active,
            "created_ms": e.created_ms,
            "not_after_ms": e.not_after_ms,
            "revoked_ms": e.revoked_ms,
            "public_hex": e.material.hex(),
        }
        for e in sorted(entries, key=lambda e: e.created_ms)
    ]
    if args.json:
        print(json.dumps({"node": ident.node, "keys": rows}, sort_keys=True))
        return 0
    print(f"node {ident.node}")
    for r in rows:
        mark = "*" if r["active"] else " "
        print(f"{mark} {r['key_id']}  {r['alg']}  {r['status']}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    try:
        old, signer = _store(args).rotate(args.overlap)
    except (KeyStoreError, OSError) as exc:
        raise _fail(exc) from exc
    print(f"rotated {old} -> {signer.key_id}; {old} verifies for {args.overlap:g} s more")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    try:
        _store(args).revoke(args.key_id)
    except (KeyStoreError, OSError) as exc:
        raise _fail(exc) from exc
    print(f"revoked {args.key_id}")
    return 0
