"""One gateway↔cloud link's envelopes: who seals with which key, who is trusted to open.

Every message between a gateway and the cloud travels in an aMCP envelope (``docs/wire.md``),
signed with the link's HMAC session keys: ``up`` (gateway → cloud) and ``down`` (cloud →
gateway), both derived with HKDF from one shared link secret. Until enrolment provides that
secret by key agreement it comes from configuration (a file readable only by the service).

- :class:`GatewayLink`: a gateway's side (one cloud).
- :class:`CloudLinks`: the cloud's side (many gateways; a gateway's keys are loaded the first
  time it is heard from). It also checks that the envelope's signer is the gateway the topic
  names, so one gateway can never speak for another.

Envelopes are made when a message is *sent*: call :meth:`seal` right before publishing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from amcp.crypto import Keyring, derive_link_keys
from amcp.replay import ReplayGuard
from amcp.wire import (
    Context,
    EnvelopeError,
    Opened,
    Opener,
    Sealer,
    SourceMismatchError,
    UnknownKeyError,
    Verified,
)
from amcp.wire.messages import Message

DEFAULT_CLOUD_ID = "cloud"


def read_secret(path: str | Path) -> bytes:
    """A link secret file: hex (as written by the tools) or raw bytes, at least 16 bytes."""
    raw = Path(path).read_bytes().strip()
    try:
        secret = bytes.fromhex(raw.decode())
    except (UnicodeDecodeError, ValueError):
        secret = raw
    if len(secret) < 16:
        raise ValueError(f"link secret in {path} is shorter than 16 bytes")
    return secret


class GatewayLink:
    def __init__(
        self,
        gateway: str,
        secret: bytes,
        replay_db: Path | None,
        *,
        cloud: str = DEFAULT_CLOUD_ID,
        zone: str = "",
        window_s: float = 90.0,
    ) -> None:
        keys = derive_link_keys(secret, gateway=gateway, cloud=cloud)
        self.gateway = gateway
        self.cloud = cloud
        self.sealer = Sealer(keys.up, zone=zone)
        self.guard = ReplayGuard(replay_db, window_s=window_s)
        self._keyring = Keyring([keys.down.entry()])
        self.opener = Opener(self._keyring, self.guard, window_s=window_s)

    def rekey(self, secret: bytes) -> None:
        """Switch to keys from a renewed link secret (enrolment renewal).

        New envelopes are signed with the new up key at once; the cloud's old down key stays
        trusted beside the new one, so replies already on their way still open.
        """
        keys = derive_link_keys(secret, gateway=self.gateway, cloud=self.cloud)
        self._keyring.add(keys.down.entry())
        self.sealer.rekey(keys.up)

    def seal(self, message: Message, topic: str, context: Context | None = None) -> bytes:
        return self.sealer.seal(message, topic, context)

    def open(self, data: bytes, topic: str) -> Opened:
        opened = self.opener.open(data, topic)
        assert opened is not None  # only retained announcements return None
        return opened

    def close(self) -> None:
        self.guard.close()


class CloudLinks:
    def __init__(
        self,
        secrets: Callable[[str], bytes | None],
        replay_db: Path | None,
        *,
        cloud: str = DEFAULT_CLOUD_ID,
        window_s: float = 90.0,
        recheck_s: float = 5.0,
    ) -> None:
        """``recheck_s``: how often a gateway's secret is looked up again, so a gateway
        revoked by another process (``cybernetic pki revoke`` deletes its secret) is refused
        within that time by a running cloud."""
        self.cloud = cloud
        self._secrets = secrets
        self._keyring = Keyring()
        self.guard = ReplayGuard(replay_db, window_s=window_s)
        self.opener = Opener(self._keyring, self.guard, window_s=window_s)
        self._sealers: dict[str, Sealer] = {}
        self._key_ids: dict[str, list[str]] = {}
        self._checked: dict[str, float] = {}
        self.recheck_s = recheck_s
        self._lock = threading.Lock()

    def _ensure(self, gateway: str) -> Sealer:
        with self._lock:
            sealer = self._sealers.get(gateway)
            if sealer is None:
                secret = self._secrets(gateway)
                if secret is None:
                    raise UnknownKeyError(f"link:{gateway}")
                keys = derive_link_keys(secret, gateway=gateway, cloud=self.cloud)
                self._keyring.add(keys.up.entry())
                self._key_ids.setdefault(gateway, []).append(keys.up.key_id)
                self._checked[gateway] = time.monotonic()
                sealer = self._sealers[gateway] = Sealer(keys.down)
            return sealer

    def forget(self, gateway: str) -> None:
        """Stop trusting a gateway at once (revocation): its keys are revoked in the keyring."""
        now_ms = int(time.time() * 1000)
        with self._lock:
            for key_id in self._key_ids.pop(gateway, []):
                self._keyring.revoke(key_id, now_ms)
            self._sealers.pop(gateway, None)
            self._checked.pop(gateway, None)

    def _still_trusted(self, gateway: str) -> None:
        last = self._checked.get(gateway)
        if last is None or time.monotonic() - last < self.recheck_s:
            return
        self._checked[gateway] = time.monotonic()
        if self._secrets(gateway) is None:
            self.forget(gateway)

    def _reload(self, gateway: str) -> bool:
        """Re-read a gateway's link secret (renewed by enrolment); True if it changed."""
        secret = self._secrets(gateway)
        if secret is None:
            return False
        keys = derive_link_keys(secret, gateway=gateway, cloud=self.cloud)
        with self._lock:
            if self._keyring.get(keys.up.key_id) is not None:
                return False
            self._keyring.add(keys.up.entry())  # the old key stays trusted beside it
            self._key_ids.setdefault(gateway, []).append(keys.up.key_id)
            self._sealers[gateway] = Sealer(keys.down)
        return True

    def open(self, gateway: str, data: bytes, topic: str) -> Opened:
        """Verify an envelope received on ``topic`` from ``gateway`` (named by the topic).

        An envelope signed with a key we do not know yet makes us re-read the gateway's link
        secret once: after a renewal the gateway switches first, and we follow.
        """
        self._still_trusted(gateway)  # a revoked gateway's keys are gone: UnknownKeyError
        self._ensure(gateway)
        try:
            opened = self.opener.open(data, topic)
        except UnknownKeyError:
            if not self._reload(gateway):
                raise
            opened = self.opener.open(data, topic)
        assert opened is not None
        if opened.header.source != gateway:
            raise SourceMismatchError(opened.header.key_id, gateway, opened.header.source)
        return opened

    def authentic(self, gateway: str, data: bytes, topic: str) -> Verified | None:
        """The envelope if ``gateway`` really signed it, however old (no freshness or replay
        check, nothing recorded); None if it is not authentic."""
        try:
            self._ensure(gateway)
            verified = self.opener.verify(data, topic, fresh=False)
        except EnvelopeError:
            return None
        return verified if verified.header.source == gateway else None

    def open_retained(self, gateway: str, data: bytes, topic: str) -> Opened | None:
        """Open a retained message (a capability announcement): judged by its version, not
        by clock window or nonce; ``None`` means "not newer than one already seen"."""
        self._ensure(gateway)
        opened = self.opener.open(data, topic, retained=True)
        if opened is not None and opened.header.source != gateway:
            raise SourceMismatchError(opened.header.key_id, gateway, opened.header.source)
        return opened

    def seal(
        self, gateway: str, message: Message, topic: str, context: Context | None = None
    ) -> bytes:
        return self._ensure(gateway).seal(message, topic, context)

    def close(self) -> None:
        self.guard.close()


def secrets_in_dir(directory: Path) -> Callable[[str], bytes | None]:
    """Look up a gateway's link secret as the file named after it in ``directory``."""

    def lookup(gateway: str) -> bytes | None:
        if not gateway or "/" in gateway or gateway.startswith("."):
            return None
        path = directory / gateway
        return read_secret(path) if path.is_file() else None

    return lookup
