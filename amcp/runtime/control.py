"""A daemon's control socket: one JSON request per line, one JSON answer per line.

Both daemons have one (``gateway.control``: rules; ``cloud.control``: fleet authoring and
policy bundles), at ``{state_dir}/control.sock``, a Unix socket made mode 0600, so only the
daemon's own user and root can use it and nothing of it is reachable from the network. This
module is what they share: the server loop (:class:`ControlSocket`, a supervised child) and
the blocking client the command line uses (:func:`request`). What a request means is the
daemon's business: the server hands each line to an ``answer`` coroutine and writes back
what it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from amcp.runtime.supervisor import ChildContext

log = logging.getLogger(__name__)
T = TypeVar("T")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 4 * 1024 * 1024
"""Longest request line (a rule set of a few thousand rules)."""
MAX_SOCKET_PATH = 107
"""AF_UNIX path limit on Linux (108 bytes with the terminating NUL)."""

Answerer = Callable[[bytes], Awaitable[msgspec.Struct]]
_encoder = msgspec.json.Encoder()


class ControlSocket:
    """Serve ``answer`` on the Unix socket at ``path`` while :meth:`run` runs."""

    def __init__(
        self, path: Path, answer: Answerer, *, what: str = "control", limit: int = MAX_REQUEST
    ) -> None:
        """``limit``: the longest request line served (longer drops the client)."""
        self.path = path
        self.answer = answer
        self.what = what
        self.limit = limit

    async def run(self, ctx: ChildContext) -> None:
        if len(str(self.path).encode()) > MAX_SOCKET_PATH:
            log.warning(
                "control socket path too long for a Unix socket; %s only by restart",
                self.what,
                extra={"path": str(self.path)},
            )
            ctx.ready()
            await asyncio.Event().wait()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a daemon that was killed
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=self.limit
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
            log.info("control client dropped", extra={"error": str(exc)})
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def request(path: Path, message: object, answer: type[T], timeout: float = 10.0) -> T:
    """One request to a running daemon (blocking; the CLI's side). Raises OSError when no
    daemon listens there (not running, or the socket is stale)."""
    import socket  # noqa: PLC0415 - the client side only

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(_encoder.encode(message) + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the control socket without answering")
            data += chunk
    return msgspec.json.decode(data, type=answer)
