"""Run a private Mosquitto with the shipped configuration (demo, tests, benchmarks).

The configuration lives in ``packaging/mosquitto/`` (in a wheel: ``cybernetic/_mosquitto``).
:class:`MosquittoBroker` renders it for a port and a state folder, manages the password file
with ``mosquitto_passwd`` and starts, stops and restarts the process: outage tests stop the
broker and start it again on the same port with the same persistent state.
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


def render_tls(listener: TlsListener, *, port: int, bind: str = "127.0.0.1") -> str:
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
    )


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
) -> str:
    template = (config_dir() / "mosquitto.conf.template").read_text()
    log_dest = f"log_dest file {log_file}" if log_file else "log_dest stderr"
    text = template.format(
        port=port,
        bind=bind,
        state_dir=state_dir,
        password_file=password_file,
        acl_file=acl_file,
        log_dest=log_dest,
        # a private broker started by root keeps root's files readable (tests, demo)
        run_as=run_as or getpass.getuser(),
    )
    if tls is not None:
        listen = tls_port or tls.port or free_port()
        text += render_tls(tls, port=listen, bind=tls_bind or bind)
    return text


class MosquittoBroker:
    """One Mosquitto process on a loopback port with its own state folder."""

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        *,
        tls: TlsListener | None = None,
        acl: str = "acl",
    ) -> None:
        """``tls`` adds a TLS listener on :attr:`tls_port`; ``acl`` names the shipped
        ACL file (``acl-cloud`` for a cloud broker that gateways reach by certificate)."""
        if shutil.which(MOSQUITTO_BIN) is None:
            raise BrokerError("mosquitto is not installed: apt-get install mosquitto")
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.tls = tls
        self.tls_port: int | None = None
        if tls is not None:
            self.tls_port = tls.port if tls.port is not None else free_port()
        self.host = "127.0.0.1"
        self.password_file = state_dir / "passwd"
        self.acl_file = state_dir / "acl"
        self.conf_file = state_dir / "mosquitto.conf"
        self.log_file = state_dir / "mosquitto.log"
        self._users: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        shutil.copyfile(config_dir() / acl, self.acl_file)
        self.password_file.touch(mode=0o600)
        self.conf_file.write_text(
            render_config(
                port=self.port,
                state_dir=state_dir,
                password_file=self.password_file,
                acl_file=self.acl_file,
                log_file=self.log_file,
                tls=tls,
                tls_port=self.tls_port,
            )
        )

    # -- accounts -----------------------------------------------------------------------
    def add_user(self, username: str, password: str) -> None:
        """Create or update an account; a running broker reloads the password file."""
        # the password goes in on stdin: on a command line any local user could read it in ps
        subprocess.run(  # noqa: S603 - fixed binary; arguments are not shell-parsed
            [PASSWD_BIN, str(self.password_file), username],
            input=f"{password}\n{password}\n".encode(),
            check=True,
            capture_output=True,
        )
        self._users[username] = password
        self.reload()

    def password(self, username: str) -> str:
        return self._users[username]

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
