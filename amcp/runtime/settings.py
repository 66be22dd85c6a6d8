"""Configuration sections shared by the gateway and the cloud (MQTT links, metrics, logs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class BrokerLink(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One MQTT connection. The password may come from the environment or a file instead.

    With ``ca_file`` or ``cert_file`` set the connection uses TLS; with ``cert_file`` it is
    mutual TLS, where the certificate (from enrolment, docs/trust.md) is the identity and no
    username or password is needed. All empty: plain TCP, as before.
    """

    host: str = "127.0.0.1"
    port: Port = 1883
    username: str = ""
    password: str = ""
    password_file: str = ""
    keepalive: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30
    reconnect_initial: Seconds = 0.2
    reconnect_max: Seconds = 10.0
    ca_file: str = ""
    """PEM trust bundle that verifies the broker's certificate (the fleet root)."""
    cert_file: str = ""
    """PEM client certificate; may hold the private key too (enrolment writes both in one)."""
    key_file: str = ""
    """PEM private key of ``cert_file`` when it is a separate file (mode 0600)."""

    @property
    def uses_tls(self) -> bool:
        return bool(self.ca_file or self.cert_file)

    def secret(self) -> str | None:
        """The password: inline (or from ``CYBERNETIC__…__PASSWORD``), else from its file."""
        if self.password:
            return self.password
        if self.password_file:
            return Path(self.password_file).read_text().strip()
        return None

    def __repr__(self) -> str:  # never print the password
        tls = ", tls" if self.uses_tls else ""
        return f"BrokerLink(host={self.host!r}, port={self.port}, username={self.username!r}{tls})"


class MetricsSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    listen: str = "127.0.0.1:9464"


class LogSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    level: Annotated[str, msgspec.Meta(pattern="^(debug|info|warning|error)$")] = "info"
    format: Literal["auto", "text", "json"] = "auto"
    """``auto``: plain text when stderr is a terminal, JSON lines otherwise (docs/operations.md)."""
