"""The running cloud's control socket: the command line authors fleet state through it.

The cloud daemon owns its CRDT store file, so ``cybernetic fleet`` does not write it: it sends
one request per line to ``{state_dir}/control.sock`` (mode 0600; the protocol is
:mod:`amcp.runtime.control`, the gateway's too) and the cloud writes the rows in its own
store, on its writer thread, through :class:`~cloud.authoring.Authoring`; sync then carries
them down. Requests (``op`` tags) and what they answer::

    {"op": "limit.set", "target": "zone/north", "key": "device/flood", "rate": 5, "burst": 5}
    {"op": "limit.remove", "target": "all", "key": "device/flood"}
    {"op": "desired.set", "target": "gw/gw-1", "device": "lamp", "field": "mode", "value": "eco"}
    {"op": "desired.remove", "target": "gw/gw-1", "device": "lamp", "field": "mode"}
    {"op": "zone.set", "gateway": "gw-1", "zone": "north"}
    {"op": "zone.remove", "gateway": "gw-1"}
        → {"ok": true, "written": {namespace, key, target, version, removed, existed},
           "applied": {namespace, key, version, gateways, acknowledged, pending}}
    {"op": "applied", "namespace": "limits", "key": "all/device/flood"}      (target optional)
        → {"ok": true, "written": ..., "applied": ...}
    {"op": "limits.list", "target": "all"}       (target optional)
        → {"ok": true, "limits": {key: {rate, burst}}}
    {"op": "marks"}
        → {"ok": true, "version": N, "marks": [{gateway, acked, received, last_seen_ms, zone}]}

A refused request answers ``{"ok": false, "error": "invalid", "field": "rate", "detail": ...}``
(a value that fails its schema: nothing written), ``"bad_request"`` (not a request),
``"not_found"`` or ``"store"`` (the store failed; the cloud goes on).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec

from amcp.fleet import RowError
from amcp.runtime.control import SOCKET_NAME, ControlSocket
from amcp.runtime.control import request as _request
from amcp.runtime.supervisor import ChildContext
from cloud.authoring import Applied, Authoring, Mark, Written

log = logging.getLogger(__name__)

__all__ = ["SOCKET_NAME", "Answer", "CloudControl", "send"]


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


class CloudControl:
    def __init__(self, path: Path, authoring: Authoring) -> None:
        self.path = path
        self.authoring = authoring
        self.served = 0

    async def run(self, ctx: ChildContext) -> None:
        await ControlSocket(self.path, self.answer, what="fleet authoring").run(ctx)

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
        except Exception as exc:  # the store failed: the client hears why, the cloud goes on
            log.warning("control request failed", extra={"error": str(exc)})
            return Answer(ok=False, error="store", detail=str(exc)[:300])
        self.served += 1
        return answer

    async def _do(self, request: Request) -> Answer:
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


def send(path: Path, request: Request, timeout: float = 10.0) -> Answer:
    """One request to the running cloud (blocking; the CLI's side). Raises OSError when no
    cloud listens there (not running, or the socket is stale)."""
    return _request(path, request, Answer, timeout)
