"""Configuration sections shared by the gateway and the cloud (MQTT links, metrics, logs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class BrokerLink(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One MQTT connection. The password may come from the environment or a file instead."""

    host: str = "127.0.0.1"
    port: Port = 1883
    username: str = ""
    password: str = ""
    password_file: str = ""
    keepalive: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30
    reconnect_initial: Seconds = 0.2
    reconnect_max: Seconds = 10.0

    def secret(self) -> str | None:
        """The password: inline (or from ``CYBERNETIC__…__PASSWORD``), else from its file."""
        if self.password:
            return self.password
        if self.password_file:
            return Path(self.password_file).read_text().strip()
        return None

    def __repr__(self) -> str:  # never print the password
        return f"BrokerLink(host={self.host!r}, port={self.port}, username={self.username!r})"


class MetricsSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    listen: str = "127.0.0.1:9464"


class LogSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    level: Annotated[str, msgspec.Meta(pattern="^(debug|info|warning|error)$")] = "info"
