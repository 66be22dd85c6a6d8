"""A running gateway's control socket: the command line changes its rules without a restart.

``{state_dir}/control.sock`` is a Unix socket the daemon makes mode 0600, so only its own
user and root can use it, and nothing of it is reachable from the network. One JSON request
per line, one JSON answer per line::

    {"op": "rules.write", "rows": [["hot", "<base64 rule>"], ["old", null]],
     "expect": "<sha256 of the rules it read>"}
    → {"ok": true, "written": 2}
    → {"ok": false, "error": "conflict", "detail": "..."}     (nothing written)

The client (``cybernetic patterns add|remove -c gateway.toml``) reads the gateway's rules
read-only, checks the new set compiles and that nothing depends on a removed rule, and sends
the rows with the digest of what it read (:func:`rules_digest`). The daemon writes them in
its own store, on its writer thread, only if its rules are still what the client read (the
cloud may have synced a change meanwhile); the rules service then swaps in the new set as for
any store change. Only the rules' namespace can be written here.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import msgspec

from amcp.runtime.control import MAX_REQUEST, MAX_SOCKET_PATH, SOCKET_NAME, ControlSocket
from amcp.runtime.control import request as _request
from amcp.runtime.supervisor import ChildContext
from amcp.store import LWWStore, Store

log = logging.getLogger(__name__)

__all__ = [
    "MAX_REQUEST",
    "MAX_SOCKET_PATH",
    "SOCKET_NAME",
    "Answer",
    "ConflictError",
    "ControlServer",
    "RulesWrite",
    "encode_rows",
    "rules_digest",
    "send",
]


class RulesWrite(msgspec.Struct, tag="rules.write", tag_field="op", forbid_unknown_fields=True):
    rows: list[tuple[str, str | None]]
    """(rule id, base64 of the encoded rule), or None to remove it."""
    expect: str
    """:func:`rules_digest` of the rules the client read."""


Request = RulesWrite
_decoder = msgspec.json.Decoder(Request)


class Answer(msgspec.Struct, omit_defaults=True):
    ok: bool
    written: int = 0
    error: str = ""
    detail: str = ""


_encoder = msgspec.json.Encoder()


def rules_digest(items: Mapping[str, bytes]) -> str:
    """A digest of a namespace's rows, the same on both sides of the socket."""
    h = hashlib.sha256()
    for key in sorted(items):
        value = items[key]
        h.update(len(key).to_bytes(4, "big") + key.encode())
        h.update(len(value).to_bytes(4, "big") + value)
    return h.hexdigest()


class ConflictError(Exception):
    """The rules changed since the client read them."""


class ControlServer:
    def __init__(self, path: Path, store: Store, namespace: str) -> None:
        self.path = path
        self.store = store
        self.namespace = namespace
        self.served = 0

    async def run(self, ctx: ChildContext) -> None:
        await ControlSocket(self.path, self._answer, what="rules change").run(ctx)

    async def _answer(self, line: bytes) -> Answer:
        try:
            request = _decoder.decode(line)
            rows = [
                (
                    self.namespace,
                    key,
                    None if value is None else base64.b64decode(value, validate=True),
                )
                for key, value in request.rows
            ]
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return Answer(ok=False, error="bad_request", detail=str(exc)[:300])
        if not rows:
            return Answer(ok=True)

        def write_if_unchanged(core: LWWStore) -> int:
            if rules_digest(core.items(self.namespace)) != request.expect:
                raise ConflictError
            core.write(rows)
            return len(rows)

        try:
            written = await self.store.call(write_if_unchanged)
        except ConflictError:
            return Answer(
                ok=False,
                error="conflict",
                detail="the gateway's rules changed since they were read; read them again",
            )
        except Exception as exc:  # the store failed: the client hears why, the daemon goes on
            log.warning("control write failed", extra={"error": str(exc)})
            return Answer(ok=False, error="store", detail=str(exc)[:300])
        self.served += 1
        log.info("rules changed through the control socket", extra={"rows": written})
        return Answer(ok=True, written=written)


def send(path: Path, request: RulesWrite, timeout: float = 10.0) -> Answer:
    """One request to a running gateway (blocking; the CLI's side). Raises OSError when no
    gateway listens there (not running, or the socket is stale)."""
    return _request(path, request, Answer, timeout)


def encode_rows(rows: Mapping[str, bytes | None]) -> list[tuple[str, str | None]]:
    return [
        (key, None if value is None else base64.b64encode(value).decode())
        for key, value in rows.items()
    ]
