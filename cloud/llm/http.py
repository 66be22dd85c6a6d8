"""What the HTTP adapters share: one httpx client per provider, the POST of a streaming
request, HTTP and transport errors mapped to :class:`ProviderError`, Retry-After, and the
server-sent-events and NDJSON line framings.

Mapping (the only place httpx errors are caught)::

    connect error, TLS, DNS     → unreachable     429                 → rate_limited
    connect/read/pool timeout   → timeout         401, 403            → auth
    peer closed mid-body        → stream_cut      other 4xx           → refused
    5xx (529 overloaded too)    → server_error
"""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import httpx
import msgspec

from cloud.llm.errors import ErrorKind, ProviderError
from cloud.llm.settings import ProviderSettings
from cloud.llm.types import Chunk, Request

USER_AGENT = "cybernetic-edge-llm"
_json = msgspec.json.Decoder()


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``."""
    ms = headers.get("retry-after-ms")
    if ms:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def status_kind(status: int) -> ErrorKind:
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server_error"
    return "refused"


def error_detail(body: bytes) -> str:
    """The provider's own error message from an error body (OpenAI, Anthropic and Ollama
    shapes), else the start of the body."""
    try:
        doc: Any = _json.decode(body)
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err.get("type") or err)[:200]
        if err:
            return str(err)[:200]
    return str(doc)[:200]


class HttpProvider:
    """Base of the three adapters: the client, the key, and :meth:`post` for a stream."""

    kind = "openai"

    def __init__(
        self,
        settings: ProviderSettings,
        key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.label
        self.model = settings.model
        self.context_window = settings.context_window
        self.max_output_tokens = settings.max_output_tokens
        self.timeout_s = settings.timeout_s
        self._key = key
        self._client = httpx.AsyncClient(
            base_url=settings.url,
            headers={"user-agent": USER_AGENT, **self.auth_headers(key)},
            timeout=httpx.Timeout(settings.timeout_s),
            transport=transport,
        )

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"} if key else {}

    def stream(self, request: Request) -> AsyncGenerator[Chunk, None]:
        raise NotImplementedError  # each adapter's own

    def scrub(self, text: str) -> str:
        """``text`` without the key, should a provider echo it back."""
        return text.replace(self._key, "[redacted]") if self._key else text

    def fail(self, kind: ErrorKind, detail: str = "", **kw: Any) -> ProviderError:
        return ProviderError(self.name, kind, self.scrub(detail), **kw)

    async def aclose(self) -> None:
        await self._client.aclose()

    @contextlib.asynccontextmanager
    async def post(
        self, path: str, body: Any, wait_s: float | None = None
    ) -> AsyncIterator[AsyncIterator[str]]:
        """POST ``body`` as JSON and give the response's lines, errors mapped."""
        request = self._client.build_request(
            "POST",
            path,
            content=msgspec.json.encode(body),
            headers={"content-type": "application/json", "accept": "text/event-stream"},
            timeout=httpx.Timeout(wait_s) if wait_s else httpx.USE_CLIENT_DEFAULT,
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise self.fail("timeout", type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise self.fail("unreachable", f"{type(exc).__name__}: {exc}") from None
        try:
            if response.status_code >= 400:
                await self._raise_status(response)
            yield self._lines(response)
        finally:
            await response.aclose()

    async def _raise_status(self, response: httpx.Response) -> None:
        try:
            body = await response.aread()
        except httpx.HTTPError:
            body = b""
        status = response.status_code
        retry_after = parse_retry_after(response.headers) if status in (429, 503, 529) else None
        raise self.fail(
            status_kind(status), error_detail(body), status=status, retry_after=retry_after
        )

    async def _lines(self, response: httpx.Response) -> AsyncIterator[str]:
        try:
            async for line in response.aiter_lines():
                yield line
        except httpx.TimeoutException as exc:
            raise self.fail("timeout", f"no next chunk ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise self.fail("stream_cut", f"{type(exc).__name__}: {exc}") from None


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event, data); the event is "message" when not named."""
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    if data:
        yield event or "message", "\n".join(data)
