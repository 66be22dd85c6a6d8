"""Run a private Mosquitto with the shipped configuration (demo, tests, benchmarks).

The configuration lives in ``packaging/mosquitto/`` (in a wheel: ``cybernetic/_mosquitto``).
:class:`MosquittoBroker` renders it for a port and a state folder, manages the password files
with ``mosquitto_passwd`` and starts, stops and restarts the process: outage tests stop the
broker and start it again on the same port with the same persistent state.

A gateway's broker has two kinds of listener (docs/trust.md, "Devices on the local broker"):

- the **service listener** (:attr:`MosquittoBroker.port`, loopback): service accounts
  (:meth:`MosquittoBroker.add_user`: ``gateway``, ``cloud``) from the service password file;
  the gateway's clients each pick their own client id (``<gateway>-ingest``, ...);
- the **device listeners** (:attr:`MosquittoBroker.device_port`, and the TLS listener when it
  takes passwords): device accounts (:meth:`MosquittoBroker.add_device`) from the device
  password file, with ``use_username_as_clientid``: a device's client id is its username, so
  it can neither take over nor discard another client's session.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO_BIN = "mosquitto"
PASSWD_BIN = "mosquitto_passwd"  # noqa: S105 - a program name, not a password


class BrokerError(RuntimeError):
    """The broker could not be set up or did not come up."""


def config_dir() -> Path:
    """The folder holding the shipped broker configuration."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_mosquitto", here.parent / "packaging" / "mosquitto"):
        if (candidate / "mosquitto.conf.template").exists():
            return candidate
    raise BrokerError("shipped Mosquitto configuration not found (packaging/mosquitto)")


# Ports for private brokers and metrics endpoints come from below the kernel's ephemeral range
# (32768-60999 on Linux), so an outgoing connection can never take one between the moment it
# is chosen and the moment its listener binds; each pytest-xdist worker gets its own slice, so
# two workers never hand out the same port; a process never hands out a port twice.
_PORT_BASE = 20000
_PORT_SLICES = 8
_PORT_SLICE = 1500
_handed_out: set[int] = set()


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else os.getpid()
    start = _PORT_BASE + (index % _PORT_SLICES) * _PORT_SLICE
    return range(start, start + _PORT_SLICE)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port in TIME_WAIT counts as taken
        except OSError:
            return False
    return True


def free_port() -> int:
    """A local TCP port nobody listens on and this process has not handed out before."""
    ports = _port_slice()
    offset = random.randrange(len(ports))  # spreads ports; not a secret
    for i in range(len(ports)):
        port = ports[(offset + i) % len(ports)]
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise BrokerError(f"no free port left in {ports.start}-{ports.stop - 1}")


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener (docs/trust.md).

    With ``require_certificate`` (the cloud broker) clients present certificates from the
    fleet CA and the certificate's common name becomes the MQTT username
    (``use_identity_as_username``), so the ACL's ``%u`` patterns keep each gateway to its own
    topics; ``crlfile`` lists revoked certificates and is re-read on SIGHUP
    (:meth:`MosquittoBroker.reload`). Without it (a gateway's broker for devices) the broker
    only proves itself and clients log in with their password, over the encrypted link.
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    crlfile: Path | None = None
    port: int | None = None
    require_certificate: bool = True


def listener_security(
    password_file: Path, acl_file: Path, *, username_is_clientid: bool = False
) -> str:
    """The per-listener security lines (``per_listener_settings true``) of one listener."""
    lines = [
        "allow_anonymous false",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
    ]
    if username_is_clientid:
        lines[1:1] = [
            "# a device's client id is its username: it can reach no other client's session",
            "use_username_as_clientid true",
        ]
    return "\n".join(lines)


def render_tls(
    listener: TlsListener,
    *,
    port: int,
    bind: str = "127.0.0.1",
    security: str = "",
) -> str:
    """The TLS listener block; ``security`` is its :func:`listener_security` lines."""
    template = (config_dir() / "mosquitto-tls.conf.template").read_text()
    crl_line = f"crlfile {listener.crlfile}" if listener.crlfile else "# no crlfile: no revocation"
    client_auth = (
        "require_certificate true\nuse_identity_as_username true"
        if listener.require_certificate
        else "# clients log in with their password, over TLS\nrequire_certificate false"
    )
    return template.format(
        client_auth=client_auth,
        tls_port=port,
        bind=bind,
        cafile=listener.cafile,
        certfile=listener.certfile,
        keyfile=listener.keyfile,
        crl_line=crl_line,
        security=security,
    )


_DEVICE_LISTENER = """
# Device listener: field devices log in with their own account from the device password file
# (none of them is in the service password file, so none can log in above); the client id a
# device sends is replaced by its username.
listener {device_port} {device_bind}
{security}
"""


def render_config(
    *,
    port: int,
    state_dir: Path,
    password_file: Path,
    acl_file: Path,
    bind: str = "127.0.0.1",
    log_file: Path | None = None,
    run_as: str | None = None,
    tls: TlsListener | None = None,
    tls_port: int | None = None,
    tls_bind: str | None = None,
    device_password_file: Path | None = None,
    device_port: int | None = None,
    device_bind: str | None = None,
) -> str:
    """The broker configuration.

    ``password_file`` holds the service accounts of the service listener (``port``). With
    ``device_password_file`` (a gateway's broker), devices log in from that file on the
    plain device listener (``device_port``, when given) and on a TLS listener that takes
    passwords (``require_certificate=False``), with ``use_username_as_clientid``. Without it
    (the cloud broker) every listener shares ``password_file`` and ``acl_file``.
    """
    template = (config_dir() / "mosquitto.conf.template").read_text()
    log_dest = f"log_dest file {log_file}" if log_file else "log_dest stderr"
    service = listener_security(password_file, acl_file)
    devices = (
        listener_security(device_password_file, acl_file, username_is_clientid=True)
        if device_password_file is not None
        else None
    )
    device_listener = ""
    if devices is not None and device_port is not None:
        device_listener = _DEVICE_LISTENER.format(
            device_port=device_port, device_bind=device_bind or bind, security=devices
        )
    text = template.format(
        port=port,
        bind=bind,
        state_dir=state_dir,
        service_security=service,
        device_listener=device_listener,
        log_dest=log_dest,
        # a private broker started by root keeps root's files readable (tests, demo)
        run_as=run_as or getpass.getuser(),
    )
    if tls is not None:
        listen = tls_port or tls.port or free_port()
        # a TLS listener that takes passwords is a device listener on a gateway's broker
        security = devices if devices is not None and not tls.require_certificate else service
        text += render_tls(tls, port=listen, bind=tls_bind or bind, security=security)
    return text


_UNSAFE_NAME = frozenset("+#/:")
"""Characters a device name must not hold: the ACL substitutes it into topic patterns (%u);
``:`` separates the name from the hash in a password file."""
SERVICE_ACCOUNTS = frozenset({"gateway", "cloud", "enrol"})
"""The shipped ACLs' service accounts (packaging/mosquitto/acl, acl-cloud): never devices."""


class MosquittoBroker:
    """One Mosquitto process on loopback ports with its own state folder.

    :attr:`port` is the service listener (:meth:`add_user` accounts); :attr:`device_port` the
    device listener (:meth:`add_device` accounts), present unless ``devices=False``.
    """

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        *,
        tls: TlsListener | None = None,
        acl: str = "acl",
        devices: bool | None = None,
        device_port: int | None = None,
    ) -> None:
        """``tls`` adds a TLS listener on :attr:`tls_port`; ``acl`` names the shipped
        ACL file (``acl-cloud`` for a cloud broker that gateways reach by certificate).
        ``devices`` (default: unless ``acl`` is ``acl-cloud``) adds the device listener on
        :attr:`device_port` and makes a password-login TLS listener a device listener."""
        if shutil.which(MOSQUITTO_BIN) is None:
            raise BrokerError("mosquitto is not installed: apt-get install mosquitto")
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.has_devices = acl != "acl-cloud" if devices is None else devices
        self.device_port: int | None = None
        if self.has_devices:
            self.device_port = device_port if device_port is not None else free_port()
        self.tls = tls
        self.tls_port: int | None = None
        if tls is not None:
            self.tls_port = tls.port if tls.port is not None else free_port()
        self.host = "127.0.0.1"
        self.password_file = state_dir / "passwd"
        """Service accounts (the service listener)."""
        self.device_password_file = state_dir / "devices.passwd"
        """Device accounts (the device listeners)."""
        self.acl_file = state_dir / "acl"
        self.conf_file = state_dir / "mosquitto.conf"
        self.log_file = state_dir / "mosquitto.log"
        self.persistence_file = state_dir / "mosquitto.db"
        self._users: dict[str, str] = {}
        self._devices: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        shutil.copyfile(config_dir() / acl, self.acl_file)
        self.password_file.touch(mode=0o600)
        if self.has_devices:
            self.device_password_file.touch(mode=0o600)
        self.conf_file.write_text(
            render_config(
                port=self.port,
                state_dir=state_dir,
                password_file=self.password_file,
                acl_file=self.acl_file,
                log_file=self.log_file,
                tls=tls,
                tls_port=self.tls_port,
                device_password_file=self.device_password_file if self.has_devices else None,
                device_port=self.device_port,
            )
        )

    # -- accounts -----------------------------------------------------------------------
    def _set_password(self, passwd_file: Path, username: str, password: str) -> None:
        # the password goes in on stdin: on a command line any local user could read it in ps
        subprocess.run(  # noqa: S603 - fixed binary; arguments are not shell-parsed
            [PASSWD_BIN, str(passwd_file), username],
            input=f"{password}\n{password}\n".encode(),
            check=True,
            capture_output=True,
        )

    def add_user(self, username: str, password: str) -> None:
        """Create or update a service account (the service listener, :attr:`port`); a
        running broker reloads the password file."""
        if username in self._devices:
            raise BrokerError(f"{username!r} is a device account on this broker")
        self._set_password(self.password_file, username, password)
        self._users[username] = password
        self.reload()

    def add_device(self, name: str, password: str) -> None:
        """Create or update a device account (the device listeners: :attr:`device_port`
        and a password-login TLS listener); a running broker reloads the password file.

        A device's client id is its name there, so a name that is a service account's, or
        that holds ``+ # /`` (the ACL puts the name into topic patterns), is refused."""
        if not self.has_devices:
            raise BrokerError("this broker has no device listener (devices=False)")
        if not name or _UNSAFE_NAME & set(name):
            raise BrokerError(f"invalid device name {name!r}")
        if name in self._users or name in SERVICE_ACCOUNTS:
            raise BrokerError(f"{name!r} is a service account on this broker, not a device")
        self._set_password(self.device_password_file, name, password)
        self._devices[name] = password
        self.reload()

    def password(self, username: str) -> str:
        """The password of a service account or a device account made here."""
        if username in self._users:
            return self._users[username]
        return self._devices[username]

    # -- process ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(  # noqa: S603 - fixed binary, our own config
            [MOSQUITTO_BIN, "-c", str(self.conf_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # its own session: a Ctrl-C meant for the demo must not kill the broker under it
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = self.log_file.read_text() if self.log_file.exists() else ""
                raise BrokerError(f"mosquitto exited with {self._proc.returncode}: {log[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM): the broker saves its persistent state."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash or power cut would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)
            time.sleep(0.1)  # mosquitto reloads between loop iterations

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def __enter__(self) -> MosquittoBroker:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
