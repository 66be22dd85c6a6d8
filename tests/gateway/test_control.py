"""The gateway's control socket on a real store: a write lands only if the rules are still
what the client read; bad requests get a typed answer and never stop the server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from gateway.control import ControlServer, RulesWrite, encode_rows, rules_digest, send


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[Path, Store]]:
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # a short path: AF_UNIX allows 107 bytes
        store = await Store(Path(d) / "store.sqlite3", site="gw").open()
        server = ControlServer(Path(d) / "control.sock", store, "patterns")
        ctx = ChildContext("control")
        task = asyncio.create_task(server.run(ctx))
        await ctx.wait_ready()
        try:
            yield server.path, store
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()
        assert not server.path.exists()  # removed on stop


async def test_a_write_lands_only_on_the_rules_the_client_read() -> None:
    async with serving() as (path, store):
        await store.put("patterns", "a", b"rule-a")
        read = await store.items("patterns")
        ok = await asyncio.to_thread(
            send, path, RulesWrite(rows=encode_rows({"b": b"rule-b"}), expect=rules_digest(read))
        )
        assert (ok.ok, ok.written) == (True, 1)
        assert await store.get("patterns", "b") == b"rule-b"
        stale = await asyncio.to_thread(  # the same digest again: the rules changed since
            send, path, RulesWrite(rows=encode_rows({"a": None}), expect=rules_digest(read))
        )
        assert (stale.ok, stale.error) == (False, "conflict")
        assert await store.get("patterns", "a") == b"rule-a"
        assert await store.items("other") == {}


async def test_bad_requests_get_an_answer_and_the_server_goes_on() -> None:
    async with serving() as (path, store):

        def exchange(line: bytes) -> bytes:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(path))
                s.sendall(line)
                return s.recv(65536)

        for line in (
            b"not json\n",
            b'{"op": "store.drop"}\n',
            b'{"op": "rules.write", "rows": [["x", "%%%"]], "expect": ""}\n',
        ):
            answer = await asyncio.to_thread(exchange, line)
            assert b'"ok":false' in answer
            assert b'"bad_request"' in answer
        read = await store.items("patterns")
        ok = await asyncio.to_thread(
            send, path, RulesWrite(rows=encode_rows({"x": b"1"}), expect=rules_digest(read))
        )
        assert ok.ok
