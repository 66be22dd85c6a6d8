"""`cybernetic devices add|rotate|remove|list`: device accounts on the gateway's local broker.

Each device logs in to the local Mosquitto's device listeners with its own username (its device
id) and password, from the **device** password file (``/etc/cybernetic/mosquitto/devices.passwd``;
the gateway's service accounts are in another file, for the loopback service listener only).
There its client id is its username (``use_username_as_clientid``) and the broker's ACL lets it
write only ``devices/<its id>/telemetry`` and ``devices/<its id>/responses/+`` and read only
``devices/<its id>/commands/#``, so right credentials still cannot publish as another device.
Passwords are generated here, hashed by ``mosquitto_passwd`` (PBKDF2-SHA512) into the password
file, and printed **once**: nothing else keeps them. The password reaches ``mosquitto_passwd`` on
its stdin, never on a command line another user could read in ``ps``.

Because a device's name is its client id, ``add`` refuses names a service client uses or could
use: the service accounts, the gateway's id and ``<gateway id>-…`` (read from the gateway's
configuration, or ``--gateway-id``), and any name ending like a service client id
(``-ingest``, ``-s1``, ``-rules``, …). A device with such a name could take over, and with a
clean session discard, the session of the gateway client of that id.

After a change the broker must reload the file: pass ``--pid`` / ``--pid-file`` to send it
SIGHUP, or run ``systemctl reload mosquitto``.

``cybernetic devices tls`` makes the gateway's own device CA and the broker's certificate, so
devices reach the broker over TLS (port 8883 in the package) and their passwords never cross
the network in the clear; devices trust ``devices-ca.pem`` (docs/trust.md, "Devices").
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from amcp.crypto.pki import FleetCA, PkiError, write_secret_file
from amcp.runtime.config import apply_env
from cybernetic.cli import FAILED, CliError, describe_os_error, group_option

PASSWD_BIN = "mosquitto_passwd"  # noqa: S105 - a program name
DEFAULT_PASSWD = "/etc/cybernetic/mosquitto/devices.passwd"  # noqa: S105 - a path
DEFAULT_GATEWAY_CONFIG = "/etc/cybernetic/gateway.toml"
DEFAULT_TLS_DIR = "/etc/cybernetic/mosquitto/tls"
SERVER_VALID_S = 825 * 86400.0
"""The broker certificate's lifetime: the longest that TLS clients commonly still accept."""
RESERVED = frozenset({"gateway", "cloud", "enrol"})
"""Service accounts: not devices, never created or removed by this command."""
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SERVICE_CLIENT_ID = re.compile(
    r"-(ingest|rules|s1|s1-devices|uplink|sync|enrolment|enrol-[0-9A-Fa-f]+)$"
)
"""How the gateway's and the cloud's own client ids end (``<gateway id>-ingest``,
``cloud-s1``, ...: gateway/ingest.py, gateway/s1, gateway/rules, amcp/sync, cloud/)."""


class DeviceAccountError(Exception):
    """A device account could not be changed; the message names the device, never a secret."""


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def users(passwd_file: Path) -> list[str]:
    if not passwd_file.exists():
        return []
    lines = passwd_file.read_text().splitlines()
    return [line.split(":", 1)[0] for line in lines if ":" in line]


def _check_name(name: str) -> None:
    if not _DEVICE_ID.match(name):
        raise DeviceAccountError(f"invalid device id {name!r}")
    if name in RESERVED:
        raise DeviceAccountError(f"{name!r} is a service account, not a device")


def check_not_a_service_client_id(name: str, gateway_id: str | None) -> None:
    """Refuse a device name that is, or looks like, a service client's id.

    On the device listeners a device's client id is its name; a device named like the
    gateway's ingest client could take over that session and discard its queued readings."""
    if gateway_id is not None and (name == gateway_id or name.startswith(f"{gateway_id}-")):
        raise DeviceAccountError(
            f"{name!r} is, or starts like, a client id of gateway {gateway_id!r} "
            f"({gateway_id}-ingest, {gateway_id}-s1, ...): a device's client id is its name, "
            "so it could take over that client's session; choose another name"
        )
    match = _SERVICE_CLIENT_ID.search(name)
    if match is not None:
        raise DeviceAccountError(
            f"{name!r} ends like a service client id ('-{match.group(1)}'): a device's client "
            "id is its name, so it could take over that client's session; choose another name"
        )


def gateway_id_from(config: Path) -> str | None:
    """The gateway's ``[gateway] id`` (environment overrides included, as the daemon reads
    it); None when there is no such file. Only the id is read: a device can be added while
    other sections are still being written."""
    if not config.exists():
        return None
    problem = "no [gateway] id"
    try:
        data = apply_env(tomllib.loads(config.read_text()), os.environ)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        problem = str(exc)
    else:
        section = data.get("gateway")
        gateway_id = section.get("id") if isinstance(section, dict) else None
        if isinstance(gateway_id, str) and gateway_id:
            return gateway_id
    raise DeviceAccountError(
        f"cannot read the gateway's id from {config} to check the name against its client "
        f"ids ({problem[:200]}); fix it or pass --gateway-id"
    )


def set_password(passwd_file: Path, name: str, password: str) -> None:
    """Create or update ``name``'s hashed password in the broker's password file."""
    if not passwd_file.exists():
        passwd_file.parent.mkdir(parents=True, exist_ok=True)
        passwd_file.touch(mode=0o600)
    proc = subprocess.run(  # noqa: S603 - fixed program, no shell
        [PASSWD_BIN, str(passwd_file), name],
        input=f"{password}\n{password}\n".encode(),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        # mosquitto_passwd's own message names the file, never the password
        raise DeviceAccountError(
            f"mosquitto_passwd failed for {name!r}: {proc.stderr.decode(errors='replace')[:200]}"
        )


def add(passwd_file: Path, name: str, *, gateway_id: str | None = None) -> str:
    """A new device account; returns its generated password (show it once)."""
    _check_name(name)
    check_not_a_service_client_id(name, gateway_id)
    if name in users(passwd_file):
        raise DeviceAccountError(f"device {name!r} exists (use rotate)")
    password = generate_password()
    set_password(passwd_file, name, password)
    return password


def rotate(passwd_file: Path, name: str) -> str:
    """A new password for an existing device; the old one stops working on reload."""
    _check_name(name)
    if name not in users(passwd_file):
        raise DeviceAccountError(f"no device {name!r} in {passwd_file}")
    password = generate_password()
    set_password(passwd_file, name, password)
    return password


def remove(passwd_file: Path, name: str) -> None:
    _check_name(name)
    if name not in users(passwd_file):
        raise DeviceAccountError(f"no device {name!r} in {passwd_file}")
    proc = subprocess.run(  # noqa: S603 - fixed program, no shell
        [PASSWD_BIN, "-D", str(passwd_file), name], capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise DeviceAccountError(f"mosquitto_passwd -D failed for {name!r}")


def default_hosts() -> list[str]:
    """Names devices may use for this gateway: its host name, mDNS name and loopback."""
    name = socket.gethostname()
    return [name, f"{name}.local", "localhost", "127.0.0.1", "::1"]


def init_tls(
    directory: Path,
    hosts: list[str],
    *,
    owner: str | None = None,
    renew: bool = False,
    valid_s: float = SERVER_VALID_S,
) -> bool:
    """The device CA (``ca/``, made once) and the broker's key and certificate for ``hosts``.

    Writes ``server.key``, ``server.pem`` (owned by ``owner``, the broker's user, mode 0600)
    and ``devices-ca.pem``, the public certificate devices trust. Returns False when a server
    certificate is there already and ``renew`` is not set (an upgrade keeps what it has).
    """
    server_pem = directory / "server.pem"
    if server_pem.exists() and not renew:
        return False
    ca = FleetCA(directory / "ca")
    if not ca.exists():
        ca.init(name=f"Cybernetic device CA ({socket.gethostname()})")
    key, cert = ca.issue_server(hosts, valid_s=valid_s)
    write_secret_file(directory / "server.key", key, owner=owner)
    write_secret_file(server_pem, cert, owner=owner)
    public = directory / "devices-ca.pem"
    write_secret_file(public, ca.trust_bundle(), owner=owner)
    public.chmod(0o644)
    directory.chmod(0o755)
    return True


def reload_broker(pid: int) -> None:
    """Make Mosquitto re-read its password file (and ACL, CRL) without dropping clients."""
    os.kill(pid, signal.SIGHUP)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "devices", help="device accounts on the local broker"
    )
    verbs = parser.add_subparsers(dest="devices_verb", metavar="VERB", required=True)
    changes = []
    for verb, text in (
        ("add", "create a device account and print its password once"),
        ("rotate", "give a device a new password and print it once"),
        ("remove", "delete a device account"),
    ):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("device", help="the device's id (its MQTT username and client id)")
        p.set_defaults(handler=_handle)
        changes.append(p)
    lst = verbs.add_parser("list", help="list device accounts (names only)")
    lst.set_defaults(handler=_list)
    tls = verbs.add_parser(
        "tls", help="the device CA and the broker's certificate for TLS (made once)"
    )
    tls_dir = os.environ.get("CYBERNETIC_TLS_DIR", DEFAULT_TLS_DIR)
    tls.add_argument(
        "--dir",
        type=Path,
        default=Path(tls_dir),
        metavar="DIR",
        help=f"where the CA and the certificate go (default: $CYBERNETIC_TLS_DIR or {tls_dir})",
    )
    tls.add_argument(
        "--host",
        action="append",
        help="a name or IP devices use for this gateway (repeat; default: host name, "
        "<host name>.local, localhost, 127.0.0.1, ::1)",
    )
    tls.add_argument("--owner", help="the broker's user, which must read the key (mosquitto)")
    tls.add_argument(
        "--renew", action="store_true", help="issue a new server certificate (the CA stays)"
    )
    tls.set_defaults(handler=_tls)
    passwd = os.environ.get("CYBERNETIC_PASSWD_FILE", DEFAULT_PASSWD)
    group_option(
        parser,
        [*changes, lst],
        "--passwd",
        type=Path,
        default=Path(passwd),
        metavar="FILE",
        help=f"the broker's device password file (default: $CYBERNETIC_PASSWD_FILE or {passwd})",
    )
    config = os.environ.get("CYBERNETIC_GATEWAY_CONFIG", DEFAULT_GATEWAY_CONFIG)
    group_option(
        parser,
        changes[:1],
        "--gateway-config",
        type=Path,
        default=Path(config),
        metavar="FILE",
        help="gateway.toml, for the gateway id new device names must not collide with "
        f"(default: $CYBERNETIC_GATEWAY_CONFIG or {config}; skipped when absent)",
    )
    group_option(
        parser, changes[:1], "--gateway-id", help="the gateway's id (instead of --gateway-config)"
    )
    group_option(
        parser,
        changes,
        "--pid",
        type=int,
        help="send the broker (this pid) SIGHUP after the change",
    )
    group_option(
        parser,
        changes,
        "--pid-file",
        type=Path,
        metavar="FILE",
        help="send SIGHUP to the pid in this file after the change",
    )


def _pid(args: argparse.Namespace) -> int | None:
    if args.pid is not None and args.pid_file is not None:
        raise CliError("give --pid or --pid-file, not both")
    if args.pid is not None:
        return int(args.pid)
    if args.pid_file is None:
        return None
    path = Path(args.pid_file)
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = describe_os_error(exc) if isinstance(exc, OSError) else "not text"
        raise CliError(f"--pid-file {path}: {reason}") from exc
    if not text.isdigit():
        raise CliError(f"--pid-file {path} holds no process id (give the broker's pid file)")
    return int(text)


def _read_users(path: Path) -> list[str]:
    """The accounts of an existing password file, or :class:`CliError` saying what is wrong."""
    if not path.exists():
        raise CliError(
            f"no device password file at {path}: give the broker's with --passwd (or set "
            "$CYBERNETIC_PASSWD_FILE); `devices add` creates it"
        )
    try:
        return users(path)
    except OSError as exc:
        raise CliError(describe_os_error(exc, "password file")) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not a password file (not text): give --passwd FILE") from exc


def _change(args: argparse.Namespace) -> str | None:
    verb, name, path = args.devices_verb, args.device, args.passwd
    if path.is_dir():
        raise CliError(f"--passwd {path} is a directory: give the password file")
    if verb != "add":
        _read_users(path)
    if verb == "remove":
        remove(path, name)
        return None
    if verb == "add":
        gateway_id = args.gateway_id or gateway_id_from(args.gateway_config)
        return add(path, name, gateway_id=gateway_id)
    return rotate(path, name)


def _handle(args: argparse.Namespace) -> int:
    verb, name = args.devices_verb, args.device
    pid = _pid(args)  # a bad --pid-file stops the command before the change
    try:
        password = _change(args)
    except DeviceAccountError as exc:
        raise CliError(str(exc)) from exc
    except FileNotFoundError as exc:
        if exc.filename == PASSWD_BIN:
            raise CliError(f"{PASSWD_BIN} not found: install the mosquitto package") from exc
        raise CliError(describe_os_error(exc)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = describe_os_error(exc) if isinstance(exc, OSError) else "not a password file"
        raise CliError(f"{args.passwd}: {reason}") from exc
    if password is None:
        print(f"device {name} removed")
    else:
        print(f"device {name} {'added' if verb == 'add' else 'rotated'}")
        print(f"password (shown once, store it on the device): {password}")
    if pid is None:
        print("reload the broker to apply: systemctl reload mosquitto (or SIGHUP)")
        return 0
    try:
        reload_broker(pid)
    except OSError as exc:
        raise CliError(
            f"the change is saved, but the broker (pid {pid}) could not be signalled: "
            f"{exc.strerror}; reload it: systemctl reload mosquitto",
            FAILED,
        ) from exc
    return 0


def _tls(args: argparse.Namespace) -> int:
    hosts = args.host or default_hosts()
    if args.dir.exists() and not args.dir.is_dir():
        raise CliError(f"--dir {args.dir} is a file: give the directory for the certificates")
    try:
        made = init_tls(args.dir, hosts, owner=args.owner, renew=args.renew)
    except PkiError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(describe_os_error(exc)) from exc
    except KeyError as exc:
        raise CliError(f"no such user {args.owner!r} (check --owner)") from exc
    if not made:
        print(f"{args.dir / 'server.pem'} exists; --renew issues a new one")
        return 0
    print(f"broker certificate for {', '.join(hosts)} in {args.dir}")
    print(f"devices trust {args.dir / 'devices-ca.pem'}")
    print("reload the broker to apply: systemctl reload mosquitto (or SIGHUP)")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.passwd.is_dir():
        raise CliError(f"--passwd {args.passwd} is a directory: give the password file")
    names = [name for name in _read_users(args.passwd) if name not in RESERVED]
    for name in names:
        print(name)
    if not names:
        print(f"no device accounts in {args.passwd}", file=sys.stderr)
    return 0
