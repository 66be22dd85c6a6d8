"""The running cloud's control socket: the command line authors fleet state through it.

The cloud daemon owns its CRDT store file (one writer thread, an in-memory clock and change
version, notifications that wake sync), so ``cybernetic fleet`` and ``cybernetic policy``
do not write it: they send one request per line to ``{state_dir}/control.sock`` (mode 0600;
the protocol is :mod:`amcp.runtime.control`, the gateway's too; the cloud's only socket) and
the cloud writes the rows in its own store, on its writer thread, through
:class:`~cloud.authoring.Authoring`; sync then carries them down. Requests (``op`` tags) and
what they answer::

    {"op": "limit.set", "target": "zone/north", "key": "device/flood", "rate": 5, "burst": 5}
    {"op": "limit.remove", "target": "all", "key": "device/flood"}
    {"op": "desired.set", "target": "gw/gw-1", "device": "lamp", "field": "mode", "value": "eco"}
    {"op": "desired.remove", "target": "gw/gw-1", "device": "lamp", "field": "mode"}
    {"op": "zone.set", "gateway": "gw-1", "zone": "north"}
    {"op": "zone.remove", "gateway": "gw-1"}
    {"op": "pattern.set", "target": "zone/north", "rule": "hot",
     "document": {"type": "pattern", "when": "temp > 80 => alert"}}
    {"op": "pattern.remove", "target": "zone/north", "rule": "hot"}
        → {"ok": true, "written": {namespace, key, target, version, removed, existed},
           "applied": {namespace, key, version, gateways, acknowledged, pending}}
    {"op": "applied", "namespace": "limits", "key": "all/device/flood"}      (target optional)
        → {"ok": true, "written": ..., "applied": ...}
    {"op": "limits.list", "target": "all"}       (target optional)
        → {"ok": true, "limits": {key: {rate, burst}}}
    {"op": "patterns.list", "target": "all"}     (target optional)
        → {"ok": true, "patterns": {key: document}}
    {"op": "marks"}
        → {"ok": true, "version": N, "marks": [{gateway, acked, received, last_seen_ms, zone}]}
    {"op": "policies.read"}
        → {"ok": true, "rows": {"policies": {"cold@*": "<base64>"}, "policies.history": {...}}}
    {"op": "policies.write", "rows": [["policies", "cold@*", "<base64>"]], "expect": "<digest>"}
        → {"ok": true, "stored": 1}

A refused request answers ``{"ok": false, "error": "invalid", "field": "rate", "detail": ...}``
(a value that fails its schema: nothing written), ``"bad_request"`` (not a request),
``"not_found"``, ``"conflict"`` (``policies.write``: the ``policies`` rows are no longer
those of ``expect``, :func:`amcp.bundles.rows_digest`; nothing written) or ``"store"`` (the
store failed; the cloud goes on).
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path
from typing import Any

import msgspec

from amcp.fleet import RowError
from amcp.runtime.control import SOCKET_NAME, ControlSocket
from amcp.runtime.control import request as _request
from amcp.runtime.supervisor import ChildContext
from cloud.authoring import Applied, Authoring, Mark, PolicyConflictError, Written

log = logging.getLogger(__name__)

__all__ = ["MAX_REQUEST", "SOCKET_NAME", "Answer", "CloudControl", "send"]

MAX_REQUEST = 32 * 1024 * 1024
"""Longest request line: a ``policies.write`` carries a bundle (up to 8 MiB,
``amcp.bundles.MAX_ROW_BYTES``) twice, in base64."""


class _Op(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True):
    pass


class LimitSet(_Op, tag="limit.set"):
    target: str
    key: str
    rate: Any
    burst: Any = 1


class LimitRemove(_Op, tag="limit.remove"):
    target: str
    key: str


class DesiredSet(_Op, tag="desired.set"):
    device: str
    field: str
    value: Any
    target: str = "all"


class DesiredRemove(_Op, tag="desired.remove"):
    device: str
    field: str
    target: str = "all"


class ZoneSet(_Op, tag="zone.set"):
    gateway: str
    zone: str


class ZoneRemove(_Op, tag="zone.remove"):
    gateway: str


class AppliedQuery(_Op, tag="applied"):
    namespace: str
    key: str
    target: str | None = None


class LimitsList(_Op, tag="limits.list"):
    target: str | None = None


class Marks(_Op, tag="marks"):
    pass


class PatternSet(_Op, tag="pattern.set"):
    target: str
    rule: str
    """The rule id."""
    document: Any
    """The rule's JSON document (``{"type": "pattern", "when": ...}``)."""


class PatternRemove(_Op, tag="pattern.remove"):
    target: str
    rule: str


class PatternsList(_Op, tag="patterns.list"):
    target: str | None = None


class PoliciesRead(_Op, tag="policies.read"):
    pass


class PoliciesWrite(_Op, tag="policies.write"):
    rows: list[tuple[str, str, str | None]]
    """(namespace, key, base64 of the row value or None to delete it)."""
    expect: str
    """:func:`amcp.bundles.rows_digest` of the ``policies`` namespace the client read."""


Request = (
    LimitSet
    | LimitRemove
    | DesiredSet
    | DesiredRemove
    | ZoneSet
    | ZoneRemove
    | AppliedQuery
    | LimitsList
    | Marks
    | PatternSet
    | PatternRemove
    | PatternsList
    | PoliciesRead
    | PoliciesWrite
)
_decoder: msgspec.json.Decoder[Request] = msgspec.json.Decoder(Request)


class Answer(msgspec.Struct, omit_defaults=True):
    ok: bool
    error: str = ""
    field: str = ""
    detail: str = ""
    written: Written | None = None
    applied: Applied | None = None
    limits: dict[str, dict[str, Any]] | None = None
    marks: list[Mark] | None = None
    version: int | None = None
    patterns: dict[str, Any] | None = None
    rows: dict[str, dict[str, str]] | None = None
    """``policies.read``: namespace → key → base64 of the value."""
    stored: int | None = None
    """``policies.write``: rows written."""


class CloudControl:
    def __init__(self, path: Path, authoring: Authoring) -> None:
        self.path = path
        self.authoring = authoring
        self.served = 0

    async def run(self, ctx: ChildContext) -> None:
        await ControlSocket(self.path, self.answer, what="fleet authoring", limit=MAX_REQUEST).run(
            ctx
        )

    async def answer(self, line: bytes) -> Answer:
        try:
            request = _decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Answer(ok=False, error="bad_request", detail=str(exc)[:300])
        try:
            answer = await self._do(request)
        except RowError as exc:
            return Answer(ok=False, error="invalid", field=exc.field, detail=str(exc)[:300])
        except KeyError as exc:
            return Answer(ok=False, error="not_found", detail=str(exc.args[0])[:300])
        except PolicyConflictError:
            detail = "the cloud's policy bundles changed since they were read; try again"
            return Answer(ok=False, error="conflict", detail=detail)
        except Exception as exc:  # the store failed: the client hears why, the cloud goes on
            log.warning("control request failed", extra={"error": str(exc)})
            return Answer(ok=False, error="store", detail=str(exc)[:300])
        self.served += 1
        return answer

    async def _do(self, request: Request) -> Answer:  # noqa: C901, PLR0911, PLR0912 - one case per op
        a = self.authoring
        written: Written
        match request:
            case LimitSet():
                value = {"rate": request.rate, "burst": request.burst}
                written = await a.set_limit(request.target, request.key, value)
            case LimitRemove():
                written = await a.remove_limit(request.target, request.key)
            case DesiredSet():
                written = await a.set_desired(
                    request.target, request.device, request.field, request.value
                )
            case DesiredRemove():
                written = await a.remove_desired(request.target, request.device, request.field)
            case ZoneSet():
                written = await a.set_zone(request.gateway, request.zone)
            case ZoneRemove():
                written = await a.remove_zone(request.gateway)
            case AppliedQuery():
                written = await a.receipt(request.namespace, request.key, request.target)
                return Answer(ok=True, written=written, applied=await a.applied(written))
            case LimitsList():
                rows = await a.limits(request.target)
                return Answer(ok=True, limits={k: msgspec.to_builtins(v) for k, v in rows.items()})
            case Marks():
                return Answer(ok=True, marks=await a.marks(), version=await a.version())
            case PatternSet():
                written = await a.set_pattern(request.target, request.rule, request.document)
            case PatternRemove():
                written = await a.remove_pattern(request.target, request.rule)
            case PatternsList():
                return Answer(ok=True, patterns=await a.patterns(request.target))
            case PoliciesRead():
                policies = await a.policy_rows()
                found = {ns: {k: _b64(v) for k, v in r.items()} for ns, r in policies.items()}
                return Answer(ok=True, rows=found)
            case PoliciesWrite():
                values = [(ns, key, _unb64(v)) for ns, key, v in request.rows]
                stored = await a.write_policies(values, request.expect)
                if stored:
                    log.info(
                        "policy bundles written through the control socket", extra={"rows": stored}
                    )
                return Answer(ok=True, stored=stored)
        if written.existed:
            log.info(
                "fleet state written through the control socket",
                extra={
                    "namespace": written.namespace,
                    "key": written.key,
                    "removed": written.removed,
                    "version": written.version,
                },
            )
        return Answer(ok=True, written=written, applied=await a.applied(written))


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _unb64(text: str | None) -> bytes | None:
    """A row value sent as base64 (None: a delete)."""
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RowError("value", f"not base64: {exc}") from None


def send(path: Path, request: Request, timeout: float = 10.0) -> Answer:
    """One request to the running cloud (blocking; the CLI's side). Raises OSError when no
    cloud listens there (not running, or the socket is stale)."""
    return _request(path, request, Answer, timeout)
