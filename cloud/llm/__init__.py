"""The LLM engine (S4's and S5's reasoning): providers behind one seam, and a built-in
planner that answers without any (docs/llm.md).

::

    Engine ── stream / complete / run_task
      │  budgets (caller, provider) · context fitting · cache · schema checks · recording
      ▼
    chain:  openai │ anthropic │ ollama  (httpx, streaming)  ...  → planner (rules, offline)
"""

from cloud.llm.engine import Engine, ProviderCheck, TaskAnswer
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
