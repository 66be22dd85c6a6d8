"""`cybernetic policy push|list|rollback`: signed policy bundles in the cloud's store.

``push FILE --version N`` compiles and loads the policy (``.policy`` source or a compiled
``.wasm``) to check it, signs a bundle with the cloud's Ed25519 node key (``[enrolment]
pki_dir``/node, or ``--key-dir``) and writes it as the row ``NAME@ZONE`` of the cloud's
``policies`` namespace (and in ``policies.history``, for rollback); sync brings it to every
gateway, and the gateways of the zone (or all, without ``--zone``) verify and apply it
(docs/policy-language.md, "Bundles"). Versions rise across the whole namespace: a version
not above every bundle already there is refused, since a gateway refuses it too.

While the cloud runs, reads and writes go through its control socket
(``state_dir/control.sock``, cloud.control: ``policies.read``, ``policies.write``); a
stopped cloud's store is written directly (refused when it looks open in another process,
unless ``--force``).

``list`` shows the current bundles (``--history``: every bundle signed); ``rollback NAME
--to V`` signs bundle V's content again as a new, higher version, so gateways accept it.
Exit codes (docs/cli.md): 0 done, 2 refused (nothing written), 3 the cloud did not answer.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from amcp import bundles
from amcp.bundles import HISTORY_NAMESPACE, NAMESPACE, BundleRefusedError
from amcp.crypto.keyring import Keyring
from amcp.crypto.keys import Ed25519Signer, now_ms
from amcp.crypto.keystore import KeyStore, KeyStoreError
from amcp.store import LWWStore, StoreError, recorded_site
from amcp.wire.messages import PolicyBundle
from cloud.config import CloudConfig
from cloud.control import SOCKET_NAME, Answer, PoliciesRead, PoliciesWrite, send
from cybernetic.cli import UNREACHABLE, CliError, describe_os_error, iso_ms, one_line
from cybernetic.cli import require_config as load_config

STORE_FILE = "store.sqlite3"
DAY_MS = 86_400_000

Rows = dict[str, dict[str, bytes]]
"""namespace → key → value, for the two policy namespaces."""


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "policy", help="push, list and roll back signed policy bundles (docs/policy-language.md)"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    push = verbs.add_parser("push", help="sign a policy and send it to the gateways")
    push.add_argument("file", type=Path, metavar="FILE", help="a .policy source or a .wasm agent")
    push.add_argument("--version", type=_positive, required=True, help="the bundle's version")
    push.add_argument("--name", default="", help="bundle name (default: the policy's own name)")
    push.add_argument(
        "--cause",
        default="",
        metavar="ID",
        help="what the bundle answers, e.g. mitigation:ID from `cybernetic mitigation list` "
        "(carried to the gateways; `cybernetic trace` follows it)",
    )
    _target_args(push)
    push.set_defaults(handler=_handle(_push))

    lst = verbs.add_parser("list", help="list the bundles in the cloud's store")
    lst.add_argument("--history", action="store_true", help="every bundle signed, not the current")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    lst.set_defaults(handler=_handle(_list))

    back = verbs.add_parser("rollback", help="sign an older bundle's content as a new version")
    back.add_argument("name", metavar="NAME", help="the bundle's name")
    back.add_argument(
        "--to", type=_positive, required=True, metavar="VERSION", help="whose content"
    )
    back.add_argument("--version", type=_positive, default=0, help="new version (default: next)")
    _target_args(back, zone_default=None)
    back.set_defaults(handler=_handle(_rollback))

    for verb in (push, lst, back):
        verb.add_argument(
            "-c", "--config", type=Path, required=True, metavar="FILE", help="cloud.toml"
        )
        verb.add_argument(
            "--key-dir", type=Path, help="the cloud's node key (default: pki_dir/node)"
        )
    for verb in (push, back):
        verb.add_argument("--force", action="store_true", help="write a store that looks open")


def _target_args(p: argparse.ArgumentParser, zone_default: str | None = "") -> None:
    p.add_argument(
        "--zone",
        default=zone_default,
        help="only the gateways of this zone (default: every zone"
        + ("" if zone_default is not None else ", or the rolled-back bundle's zone")
        + ")",
    )
    p.add_argument(
        "--expires-in", type=_days, default=30.0, metavar="DAYS", help="days until it expires (30)"
    )


MAX_CAUSE = 200


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1: {text!r}")
    return int(text)


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 < value < 36500:
        raise argparse.ArgumentTypeError(f"not a number of days above 0: {text!r}")
    return value


class _Cloud:
    """Where the cloud keeps its store, its socket and its node key."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.config = load_config(args.config, CloudConfig)
        state = Path(self.config.cloud.state_dir)
        self.store_path = state / STORE_FILE
        self.socket = state / SOCKET_NAME
        self.force = bool(getattr(args, "force", False))
        key_dir = args.key_dir
        if key_dir is None and self.config.enrolment.pki_dir:
            key_dir = Path(self.config.enrolment.pki_dir) / "node"
        self.key_dir: Path | None = key_dir

    def signer(self) -> Ed25519Signer:
        if self.key_dir is None:
            raise CliError(
                "no node key: the cloud config has no [enrolment] pki_dir; give --key-dir"
            )
        try:
            return KeyStore(self.key_dir).signer()
        except (KeyStoreError, OSError) as exc:
            raise CliError(f"cannot read the cloud's node key in {self.key_dir}: {exc}") from exc

    def keyring(self) -> Keyring | None:
        if self.key_dir is None:
            return None
        with contextlib.suppress(KeyStoreError, OSError):
            return KeyStore(self.key_dir).keyring()
        return None

    # -- the rows ------------------------------------------------------------------------
    def _ask(self, request: PoliciesRead | PoliciesWrite) -> Answer | None:
        """The running cloud's answer; None when no cloud listens (then the file is used)."""
        if not self.socket.exists():
            return None
        try:
            answer = send(self.socket, request)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except OSError as exc:
            raise CliError(
                f"the cloud's control socket {self.socket} did not answer: "
                f"{describe_os_error(exc)}",
                UNREACHABLE,
            ) from exc
        if not answer.ok:
            raise CliError(f"the cloud refused ({answer.error}): {answer.detail} (nothing written)")
        return answer

    def read(self) -> tuple[Rows, bool]:
        """The policy rows, and whether a running cloud answered."""
        answer = self._ask(PoliciesRead())
        if answer is not None:
            found = answer.rows or {}
            rows = {
                ns: {k: base64.b64decode(v) for k, v in found.get(ns, {}).items()}
                for ns in (NAMESPACE, HISTORY_NAMESPACE)
            }
            return rows, True
        if not self.store_path.exists():
            return {NAMESPACE: {}, HISTORY_NAMESPACE: {}}, False
        with self._open() as store:
            return {ns: store.items(ns) for ns in (NAMESPACE, HISTORY_NAMESPACE)}, False

    def write(self, rows: list[tuple[str, str, bytes]], read: Rows, live: bool) -> str:
        if live:
            request = PoliciesWrite(
                rows=[(ns, k, base64.b64encode(v).decode()) for ns, k, v in rows],
                expect=bundles.rows_digest(read[NAMESPACE]),
            )
            if self._ask(request) is not None:
                return "the running cloud wrote it; sync sends it to the gateways"
        with self._open() as store:
            if bundles.rows_digest(store.items(NAMESPACE)) != bundles.rows_digest(read[NAMESPACE]):
                raise CliError("the policy bundles changed while this ran: try again")
            store.write(rows)
        return "written in the store; the cloud sends it to the gateways when it runs"

    @contextlib.contextmanager
    def _open(self) -> Any:
        path = self.store_path
        if Path(f"{path}-wal").exists() and not self.force:
            raise CliError(
                f"{path} looks open in another process (its -wal file exists) and no cloud "
                f"answers on {self.socket}: start the cloud, or pass --force if it is not running"
            )
        try:
            site = recorded_site(path) if path.exists() else None
            path.parent.mkdir(parents=True, exist_ok=True)
            store = LWWStore(path, site or self.config.cloud.id)
        except (StoreError, sqlite3.Error) as exc:
            raise CliError(f"cannot open the store {path}: {one_line(str(exc))}") from exc
        try:
            yield store
        finally:
            store.close()


def _compile(path: Path) -> tuple[bytes, str, str]:
    """(wasm, source, the policy's own name) of FILE, checked by loading it."""
    from wasm import PolicyAgent, PolicyError, compile_policy  # noqa: PLC0415 - wasmtime

    try:
        if path.suffix == ".wasm":
            wasm, source = path.read_bytes(), ""
        else:
            source = path.read_text(encoding="utf-8")
            wasm = compile_policy(source, source_name=str(path)).wasm
        agent = PolicyAgent.load(wasm)
    except PolicyError as exc:
        raise CliError(f"{path}: {one_line(str(exc))} (nothing signed)") from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 policy text (nor a .wasm file)") from exc
    return wasm, source, agent.manifest.policy


def _newest(rows: Rows, keyring: Keyring | None) -> tuple[int, str]:
    """The highest version in the namespace (current and history) and its key, among the
    bundles signed by the cloud's key (a forged row's version counts for nothing)."""
    best = (0, "")
    now = now_ms()
    for ns in (NAMESPACE, HISTORY_NAMESPACE):
        for key, data in rows[ns].items():
            with contextlib.suppress(BundleRefusedError):
                if keyring is None:
                    bundle = bundles.decode(data)[1]
                else:
                    bundle = bundles.verify(data, keyring, now, expiry=False)
                best = max(best, (bundle.version, key))
    return best


def _sign_and_write(cloud: _Cloud, bundle: PolicyBundle, read: Rows, live: bool, verb: str) -> int:
    newest, where = _newest(read, cloud.keyring())
    if bundle.version <= newest:
        raise CliError(
            f"version {bundle.version} is not above {newest} (the newest bundle, {where}): "
            f"gateways refuse it as older; give --version {newest + 1} or more (nothing written)"
        )
    try:
        data = bundles.sign(bundle, cloud.signer())
    except BundleRefusedError as exc:
        raise CliError(f"not a valid bundle: {exc.detail} (nothing written)") from exc
    key = bundles.bundle_key(bundle.name, bundle.zone)
    how = cloud.write(
        [
            (NAMESPACE, key, data),
            (HISTORY_NAMESPACE, bundles.history_key(bundle.name, bundle.version), data),
        ],
        read,
        live,
    )
    zone = bundle.zone or "every zone"
    print(
        f"{verb} {bundle.name} version {bundle.version} for {zone}, expires "
        f"{iso_ms(bundle.expires_ms)} ({key}): {how}"
    )
    return 0


def _push(args: argparse.Namespace) -> int:
    cloud = _Cloud(args)
    wasm, source, own_name = _compile(args.file)
    now = now_ms()
    bundle = PolicyBundle(
        name=args.name or own_name or args.file.stem,
        version=args.version,
        expires_ms=now + int(args.expires_in * DAY_MS),
        body=wasm,
        zone=args.zone,
        source=source,
        issued_ms=now,
        cause=_cause(args.cause),
    )
    read, live = cloud.read()
    return _sign_and_write(cloud, bundle, read, live, "pushed")


def _cause(text: str) -> str:
    if text and (len(text) > MAX_CAUSE or ":" not in text or not text.isprintable()):
        raise CliError(
            f"--cause {text[:40]!r}: not a trace id (kind:id, e.g. mitigation:0123abcd, "
            f"at most {MAX_CAUSE} characters; see `cybernetic mitigation list`)"
        )
    return text


def _rollback(args: argparse.Namespace) -> int:
    cloud = _Cloud(args)
    read, live = cloud.read()
    old = None
    keyring = cloud.keyring()
    for ns in (HISTORY_NAMESPACE, NAMESPACE):
        for data in read[ns].values():
            with contextlib.suppress(BundleRefusedError):  # only what the cloud's key signed
                bundle = (
                    bundles.decode(data)[1]
                    if keyring is None
                    else bundles.verify(data, keyring, now_ms(), expiry=False)
                )
                if bundle.name == args.name and bundle.version == args.to:
                    old = bundle
    if old is None:
        raise CliError(
            f"no bundle {args.name!r} version {args.to} in the store "
            "(see: cybernetic policy list --history)"
        )
    now = now_ms()
    version = args.version or _newest(read, cloud.keyring())[0] + 1
    bundle = msgspec.structs.replace(
        old,
        version=version,
        expires_ms=now + int(args.expires_in * DAY_MS),
        zone=old.zone if args.zone is None else args.zone,
        issued_ms=now,
    )
    return _sign_and_write(cloud, bundle, read, live, f"rolled back to version {args.to}:")


def _list(args: argparse.Namespace) -> int:
    cloud = _Cloud(args)
    read, _ = cloud.read()
    keyring = cloud.keyring()
    now = now_ms()
    ns = HISTORY_NAMESPACE if args.history else NAMESPACE
    shown = 0
    for key, data in sorted(read[ns].items()):
        shown += 1
        doc: dict[str, Any] = {"key": key}
        try:
            row, bundle = bundles.decode(data)
        except BundleRefusedError as exc:
            doc["error"] = exc.detail
        else:
            signature = "unchecked (no node key)"
            if keyring is not None:
                try:
                    bundles.verify(data, keyring, now, expiry=False)
                    signature = "ok"
                except BundleRefusedError as exc:
                    signature = exc.reason
            doc |= {
                "name": bundle.name,
                "version": bundle.version,
                "zone": bundle.zone,
                "expires": iso_ms(bundle.expires_ms),
                "expired": bundle.expires_ms <= now,
                "issued": iso_ms(bundle.issued_ms or None),
                "key_id": row.key_id,
                "signature": signature,
                "wasm_bytes": len(bundle.body),
                "source": bool(bundle.source),
            }
        if args.json:
            print(json.dumps(doc))
        elif "error" in doc:
            print(f"{key:<32} not a bundle: {doc['error']}")
        else:
            zone = doc["zone"] or "*"
            state = "EXPIRED" if doc["expired"] else "expires " + doc["expires"]
            print(
                f"{key:<32} v{doc['version']:<6} zone {zone:<12} {state}  "
                f"signature {doc['signature']}  {doc['wasm_bytes']} bytes of wasm"
            )
    if not shown and not args.json:
        print(f"no policy bundles in {cloud.store_path} ({ns})")
    return 0


def _handle(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except FileNotFoundError as exc:
            raise CliError(f"not found: {exc.filename or exc} (check the path)") from exc
        except IsADirectoryError as exc:
            raise CliError(f"{exc.filename} is a directory: give a file") from exc
        except OSError as exc:
            raise CliError(describe_os_error(exc)) from exc

    return run
