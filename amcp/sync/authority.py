"""Who may write which namespace, enforced where rows are merged and where they are sent.

A gateway is the authority on what it observes (devices' reported state, its capabilities);
the cloud is the authority on what it decides (desired state, policies, patterns, limits,
zone ACLs). A row arriving from the wrong side is refused on merge, whatever its clock, so a
compromised or buggy gateway cannot rewrite the fleet's policies by writing with a clock far
in the future, and cannot speak for another gateway: on the cloud a gateway's rows must carry
its own site (and, for keyed namespaces, keys under ``{gateway}/``).

Rules match a namespace exactly, or by prefix when they end in ``*``; the longest match wins.
``local`` namespaces (bookkeeping such as ``sync.*``) never leave the store they were written
in. A namespace no rule names follows ``default_owner``.
"""

from __future__ import annotations

import enum

import msgspec

from amcp.store.rows import Chunk, Row


class Owner(enum.StrEnum):
    CLOUD = "cloud"
    GATEWAY = "gateway"
    LOCAL = "local"


class NamespaceRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    namespace: str
    """Exact name, or a prefix ending in ``*`` (``policy.*``)."""
    owner: Owner
    keyed: bool = False
    """Gateway-owned rows must have keys starting with ``{gateway}/``."""
    fanout: bool = True
    """Gateway-owned rows are relayed by the cloud to the other gateways too."""


DEFAULT_RULES: tuple[NamespaceRule, ...] = (
    NamespaceRule(namespace="twin.desired", owner=Owner.CLOUD),
    NamespaceRule(namespace="twin.reported", owner=Owner.GATEWAY, fanout=False),
    NamespaceRule(namespace="s1.capabilities", owner=Owner.GATEWAY, keyed=True),
    NamespaceRule(namespace="s1.meta", owner=Owner.GATEWAY, keyed=True, fanout=False),
    NamespaceRule(namespace="s1.announcements", owner=Owner.LOCAL),
    NamespaceRule(namespace="policies", owner=Owner.CLOUD),
    NamespaceRule(namespace="policy.*", owner=Owner.CLOUD),
    NamespaceRule(namespace="patterns", owner=Owner.CLOUD),
    NamespaceRule(namespace="pattern.*", owner=Owner.CLOUD),
    NamespaceRule(namespace="limits", owner=Owner.CLOUD),
    NamespaceRule(namespace="zones", owner=Owner.CLOUD),
    NamespaceRule(namespace="audit.heads", owner=Owner.GATEWAY, keyed=True, fanout=False),
    NamespaceRule(namespace="sync.*", owner=Owner.LOCAL),
)

REFUSED_NAMESPACE = "sync.refused"
"""Where refusals are recorded (local: never synced)."""


class Authority:
    def __init__(
        self,
        rules: tuple[NamespaceRule, ...] | list[NamespaceRule] = DEFAULT_RULES,
        *,
        default_owner: Owner = Owner.LOCAL,
        cloud_site: str = "cloud",
    ) -> None:
        self.cloud_site = cloud_site
        self._exact = {r.namespace: r for r in rules if not r.namespace.endswith("*")}
        self._prefixes = sorted(
            ((r.namespace[:-1], r) for r in rules if r.namespace.endswith("*")),
            key=lambda p: -len(p[0]),
        )
        self._default = NamespaceRule(namespace="*", owner=default_owner)
        self._cache: dict[str, NamespaceRule] = {}

    def rule(self, namespace: str) -> NamespaceRule:
        found = self._cache.get(namespace)
        if found is None:
            found = self._exact.get(namespace)
            if found is None:
                found = next(
                    (r for p, r in self._prefixes if namespace.startswith(p)), self._default
                )
            if len(self._cache) < 10_000:
                self._cache[namespace] = found
        return found

    # -- incoming ------------------------------------------------------------------------------

    def from_gateway(self, gateway: str, item: Row | Chunk) -> str | None:
        """Why the cloud refuses ``item`` from ``gateway``, or None when it may be merged."""
        rule = self.rule(item.namespace)
        if rule.owner is not Owner.GATEWAY:
            return f"namespace owned by {rule.owner}"
        if item.site != gateway:
            return f"site {item.site!r} is not the sending gateway"
        if rule.keyed and not item.key.startswith(gateway + "/"):
            return f"key outside {gateway}/"
        return None

    def from_cloud(self, item: Row | Chunk) -> str | None:
        """Why a gateway refuses ``item`` from the cloud, or None when it may be merged."""
        rule = self.rule(item.namespace)
        if rule.owner is Owner.LOCAL:
            return "namespace is local"
        if rule.owner is Owner.GATEWAY and item.site == self.cloud_site:
            return "gateway-owned namespace written by the cloud"
        return None

    # -- outgoing ------------------------------------------------------------------------------

    def to_cloud(self, site: str, item: Row | Chunk) -> bool:
        """A gateway sends its own writes of every synced namespace; the cloud judges them
        (a write to a cloud namespace is refused there, and recorded)."""
        return item.site == site and self.rule(item.namespace).owner is not Owner.LOCAL

    def to_gateway(self, gateway: str, item: Row | Chunk) -> bool:
        rule = self.rule(item.namespace)
        if rule.owner is Owner.CLOUD:
            return True
        if rule.owner is Owner.GATEWAY:
            return item.site != self.cloud_site and (rule.fanout or item.site == gateway)
        return False


class Refusal(msgspec.Struct, frozen=True):
    """A row refused on merge, as recorded in :data:`REFUSED_NAMESPACE` and counted."""

    peer: str
    namespace: str
    key: str
    site: str
    hlc: int
    reason: str
    ts_ms: int
