"""Fit a request into a provider's context window, keeping what matters.

The window holds the system prompt, the tools and schema, the history and the answer
(``max_tokens``). When the request does not fit, whole *turns* are left out, oldest first:
a turn is a user or assistant message together with the tool results that answer its tool
calls, so a tool result is never cut in half nor left without the call it answers. The
system prompt and the newest turn always stay; when even they do not fit,
:class:`ContextTooLarge` (the engine then tries the next provider). A note takes the place of
what was left out, saying how many messages and how the first of them began.
"""

from __future__ import annotations

import msgspec

from cloud.llm.errors import ContextTooLarge
from cloud.llm.provider import Provider
from cloud.llm.tokens import counter, fixed_tokens, message_tokens
from cloud.llm.types import Message, Request

NOTE_CHARS = 80
NOTE_ROOM = 60
"""Tokens kept free for the note when turns are left out (its text is at most ~200 bytes)."""


def turns(messages: tuple[Message, ...]) -> list[list[Message]]:
    """Messages grouped into turns: a tool message joins the turn before it."""
    out: list[list[Message]] = []
    for m in messages:
        if m.role == "tool" and out:
            out[-1].append(m)
        else:
            out.append([m])
    return out


def _note(dropped: list[Message]) -> Message:
    first = next((m.content for m in dropped if m.role == "user" and m.content), "")
    began = first[:NOTE_CHARS] + ("..." if len(first) > NOTE_CHARS else "")
    text = f"[{len(dropped)} earlier messages were left out to fit the context window"
    text += f'; the first began: "{began}"]' if began else "]"
    return Message(role="user", content=text)


def fit(request: Request, provider: Provider) -> Request:
    """``request`` itself when it fits ``provider``'s window, else a trimmed copy."""
    count = counter(provider.kind)
    room = provider.context_window - (request.max_tokens or provider.max_output_tokens)
    room -= fixed_tokens(request, count)
    sizes = [message_tokens(m, count) for m in request.messages]
    if sum(sizes) <= room:
        return request
    groups = turns(request.messages)
    kept: list[list[Message]] = []
    used = 0
    room -= NOTE_ROOM
    index = len(request.messages)
    for group in reversed(groups):
        index -= len(group)
        size = sum(sizes[index : index + len(group)])
        if used + size > room:
            break
        kept.append(group)
        used += size
    if not kept:
        newest = sum(sizes[index:])
        raise ContextTooLarge(
            provider.name, newest + provider.context_window - room, provider.context_window
        )
    kept.reverse()
    messages = [m for g in kept for m in g]
    dropped = list(request.messages[: len(request.messages) - len(messages)])
    messages.insert(0, _note(dropped))
    return msgspec.structs.replace(request, messages=tuple(messages))
