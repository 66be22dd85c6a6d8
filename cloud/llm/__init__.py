"""The LLM engine (S4's and S5's reasoning): providers behind one seam, and a built-in
planner that answers without any (docs/llm.md).

::

    Engine ── stream / complete / run_task
      │  budgets (caller, provider) · context fitting · cache · schema checks · recording
      ▼
    chain:  openai │ anthropic │ ollama  (httpx, streaming)  ...  → planner (rules, offline)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud.llm.answers import TaskAnswer
    from cloud.llm.chain import ProviderCheck
    from cloud.llm.engine import Engine, Outcome
    from cloud.llm.errors import (
        AllProvidersFailed,
        BudgetExceeded,
        ContextTooLarge,
        LlmError,
        LlmKeyError,
        OutputRefused,
        ProviderError,
        TaskDataError,
    )
    from cloud.llm.settings import BudgetSettings, LlmSettings, ProviderSettings
    from cloud.llm.types import (
        Chunk,
        Done,
        Fallback,
        Message,
        Request,
        Response,
        Restart,
        Task,
        TextDelta,
        Tool,
        ToolCall,
        ToolCallDelta,
        Usage,
    )

# Names load on first use (PEP 562): reading cloud.toml ([llm] settings) loads no adapter.
_WHERE = {
    "Engine": "engine",
    "Outcome": "engine",
    "ProviderCheck": "chain",
    "TaskAnswer": "answers",
    "AllProvidersFailed": "errors",
    "BudgetExceeded": "errors",
    "ContextTooLarge": "errors",
    "LlmError": "errors",
    "LlmKeyError": "errors",
    "OutputRefused": "errors",
    "ProviderError": "errors",
    "TaskDataError": "errors",
    "BudgetSettings": "settings",
    "LlmSettings": "settings",
    "ProviderSettings": "settings",
    "Chunk": "types",
    "Done": "types",
    "Fallback": "types",
    "Message": "types",
    "Request": "types",
    "Response": "types",
    "Restart": "types",
    "Task": "types",
    "TextDelta": "types",
    "Tool": "types",
    "ToolCall": "types",
    "ToolCallDelta": "types",
    "Usage": "types",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cloud.llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cloud.llm.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AllProvidersFailed",
    "BudgetExceeded",
    "BudgetSettings",
    "Chunk",
    "ContextTooLarge",
    "Done",
    "Engine",
    "Fallback",
    "LlmError",
    "LlmKeyError",
    "LlmSettings",
    "Message",
    "Outcome",
    "OutputRefused",
    "ProviderCheck",
    "ProviderError",
    "ProviderSettings",
    "Request",
    "Response",
    "Restart",
    "Task",
    "TaskAnswer",
    "TaskDataError",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]
