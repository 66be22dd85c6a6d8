"""The running cloud's policy socket: `cybernetic policy push|rollback` write bundles here.

The cloud daemon holds its CRDT store open (one writer thread, an in-memory clock and change
version, notifications that wake sync): another process writing the same file would neither
wake sync nor keep the clocks and versions straight. So while the cloud runs, the command
line reads and writes the policy rows through ``{state_dir}/policy.sock``, a Unix socket
made mode 0600 (the cloud's own user and root), one JSON request per line::

    {"op": "policies.read"}
    → {"ok": true, "rows": {"policies": {"cold@*": "<base64>"}, "policies.history": {...}}}
    {"op": "policies.write", "rows": [["policies", "cold@*", "<base64>"]], "expect": "<digest>"}
    → {"ok": true, "written": 1}
    → {"ok": false, "error": "conflict", "detail": "..."}     (nothing written)

A write is applied on the store's writer thread only if the ``policies`` namespace is still
what the client read (:func:`amcp.bundles.rows_digest` of it), and only to the namespaces
``policies`` and ``policies.history``, with values that decode as signed bundles (the cloud
does not judge signatures: the gateways do, docs/policy-language.md "Bundles"). Sync then
sends the new row to every gateway at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
from pathlib import Path

import msgspec

from amcp import bundles
from amcp.runtime.supervisor import ChildContext
from amcp.store import LWWStore, Store

log = logging.getLogger(__name__)

SOCKET_NAME = "policy.sock"
MAX_REQUEST = 32 * 1024 * 1024
NAMESPACES = (bundles.NAMESPACE, bundles.HISTORY_NAMESPACE)
_MAX_SOCKET_PATH = 107


class PoliciesRead(msgspec.Struct, tag="policies.read", tag_field="op", forbid_unknown_fields=True):
    pass


class PoliciesWrite(
    msgspec.Struct, tag="policies.write", tag_field="op", forbid_unknown_fields=True
):
    rows: list[tuple[str, str, str | None]]
    """(namespace, key, base64 of the row value or None to delete it)."""
    expect: str
    """:func:`amcp.bundles.rows_digest` of the ``policies`` namespace the client read."""


Request = PoliciesRead | PoliciesWrite
_decoder = msgspec.json.Decoder(Request)


class Answer(msgspec.Struct, omit_defaults=True):
    ok: bool
    written: int = 0
    rows: dict[str, dict[str, str]] = {}
    error: str = ""
    detail: str = ""


_encoder = msgspec.json.Encoder()


class _ConflictError(Exception):
    pass


class PolicyControl:
    def __init__(self, path: Path, store: Store) -> None:
        self.path = path
        self.store = store
        self.served = 0

    async def run(self, ctx: ChildContext) -> None:
        if len(str(self.path).encode()) > _MAX_SOCKET_PATH:
            log.warning(
                "policy socket path too long for a Unix socket; push needs the cloud stopped",
                extra={"path": str(self.path)},
            )
            ctx.ready()
            await asyncio.Event().wait()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a cloud that was killed
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        self.path.chmod(0o600)
        ctx.ready()
        try:
            async with server:
                await server.serve_forever()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = await self.answer(line)
                writer.write(_encoder.encode(answer) + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.info("policy client dropped", extra={"error": str(exc)})
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def answer(self, line: bytes) -> Answer:
        try:
            request = _decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Answer(ok=False, error="bad_request", detail=str(exc)[:300])
        if isinstance(request, PoliciesRead):
            return await self._read()
        return await self._write(request)

    async def _read(self) -> Answer:
        found = {}
        for ns in NAMESPACES:
            items = await self.store.items(ns)
            found[ns] = {k: base64.b64encode(v).decode() for k, v in items.items()}
        return Answer(ok=True, rows=found)

    async def _write(self, request: PoliciesWrite) -> Answer:
        try:
            rows = [_row(ns, key, value) for ns, key, value in request.rows]
        except (ValueError, bundles.BundleRefusedError) as exc:
            return Answer(ok=False, error="bad_request", detail=str(exc)[:300])
        if not rows:
            return Answer(ok=True)

        def write_if_unchanged(core: LWWStore) -> int:
            if bundles.rows_digest(core.items(bundles.NAMESPACE)) != request.expect:
                raise _ConflictError
            core.write(rows)
            return len(rows)

        try:
            written = await self.store.call(write_if_unchanged)
        except _ConflictError:
            return Answer(
                ok=False,
                error="conflict",
                detail="the cloud's policy bundles changed since they were read; try again",
            )
        except Exception as exc:  # the store failed: the client hears why, the cloud goes on
            log.warning("policy write failed", extra={"error": str(exc)})
            return Answer(ok=False, error="store", detail=str(exc)[:300])
        self.served += 1
        log.info("policy bundles written through the policy socket", extra={"rows": written})
        return Answer(ok=True, written=written)


def _row(namespace: str, key: str, value: str | None) -> tuple[str, str, bytes | None]:
    if namespace not in NAMESPACES:
        raise ValueError(f"namespace {namespace!r} is not one of {', '.join(NAMESPACES)}")
    if value is None:
        return namespace, key, None
    data = base64.b64decode(value, validate=True)
    bundles.decode(data)  # a signed bundle's shape, or refused
    return namespace, key, data


def send(path: Path, request: Request, timeout: float = 10.0) -> Answer:
    """One request to the running cloud (blocking; the CLI's side). Raises OSError when no
    cloud listens there (not running, or the socket is stale)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(_encoder.encode(request) + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the cloud closed the policy socket without answering")
            data += chunk
    return msgspec.json.decode(data, type=Answer)
