"""The engine's wire-neutral types: what a caller asks, what streams back, what it got.

Every provider adapter turns a :class:`Request` into its own wire format and its stream back
into :data:`Chunk` values; nothing above the adapters knows a provider's JSON. Chunks are a
tagged union (``type`` field), so a recorded stream decodes with one typed decoder.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Role = Literal["user", "assistant", "tool"]


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A function the model asks to call, with its arguments decoded from JSON."""

    id: str
    name: str
    arguments: dict[str, Any] = {}
    error: str = ""
    """Set by an adapter when the model's arguments were not a JSON object (the engine's
    validation refuses the call, as it would a schema failure)."""


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One turn. ``tool`` turns answer the assistant's ``tool_calls`` by ``tool_call_id``."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""
    """For a ``tool`` turn: the tool's name (Ollama wants it)."""


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    """A function the model may call; ``parameters`` is its arguments' JSON Schema."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """A structured request (classify, decompose, mitigate, review_policy) and its data.

    Model providers see it rendered through its prompt template; the built-in planner answers
    from ``name`` and ``data`` directly."""

    name: str
    data: dict[str, Any] = {}


class Request(msgspec.Struct, frozen=True, kw_only=True):
    messages: tuple[Message, ...]
    system: str = ""
    tools: tuple[Tool, ...] = ()
    json_schema: dict[str, Any] | None = None
    """When set, the answer must be JSON matching this schema (checked by the engine)."""
    temperature: float | None = None
    """None: the provider's default. 0 makes the request deterministic, and so cacheable."""
    max_tokens: int | None = None
    """None: the provider's ``max_output_tokens``."""
    stop: tuple[str, ...] = ()
    timeout: float | None = None
    """Seconds to connect and between two chunks of one attempt; None: the provider's
    ``timeout_s``."""
    task: Task | None = None

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0


# -- the stream ----------------------------------------------------------------------------
class TextDelta(msgspec.Struct, frozen=True, tag="text"):
    text: str


class ToolCallDelta(msgspec.Struct, frozen=True, tag="tool_call"):
    """A complete tool call: adapters assemble a provider's partial argument chunks."""

    call: ToolCall


class Usage(msgspec.Struct, frozen=True, tag="usage"):
    input_tokens: int = 0
    output_tokens: int = 0


class Done(msgspec.Struct, frozen=True, tag="done"):
    finish_reason: str = "stop"
    """``stop``, ``length``, ``tool_calls`` (as the provider said, normalised)."""


class Restart(msgspec.Struct, frozen=True, tag="restart"):
    """From the engine only: the attempt so far is void (a stream cut, a fallback); what
    follows is a new answer from ``provider``. Discard the text received before it."""

    provider: str
    reason: str


Chunk = TextDelta | ToolCallDelta | Usage | Done | Restart


class Fallback(msgspec.Struct, frozen=True):
    """A provider that did not answer, and why (an error kind and its one-line detail)."""

    provider: str
    reason: str
    detail: str = ""


class Response(msgspec.Struct, kw_only=True):
    """A whole answer, as :meth:`Engine.complete` returns it."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    provider: str = ""
    model: str = ""
    finish_reason: str = "stop"
    usage: Usage = Usage()
    fallbacks: tuple[Fallback, ...] = ()
    cached: bool = False

    def chunks(self) -> list[Chunk]:
        """The answer as a stream (a cached answer is replayed this way)."""
        out: list[Chunk] = []
        if self.text:
            out.append(TextDelta(self.text))
        out += [ToolCallDelta(c) for c in self.tool_calls]
        out += [self.usage, Done(self.finish_reason)]
        return out
