"""`cybernetic llm check|ask`: the cloud's LLM engine from an operator's terminal.

Both read the ``[llm]`` section of the cloud's configuration (``-c``; without it
/etc/cybernetic/cloud.toml when it exists, else the defaults: the built-in planner alone) and
build the same chain the cloud runs (docs/llm.md). Keys come from the environment or the
key files the configuration names, never from the command line.

- ``check``: asks every provider of the chain for one word, once, without retries, and prints
  which answer and how fast. Exit 0 when all answer, 1 when one does not.
- ``ask "QUESTION"``: streams the answer to stdout; the provider that answered, and each one
  passed over with its reason, go to stderr. ``--task NAME`` sends the argument as the JSON
  data of a structured request (classify, decompose, mitigate, review_policy) and prints the
  validated answer. Exit 1 when no provider answers or the answer is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

from cloud.config import CloudConfig
from cybernetic.cli import FAILED, OK, USAGE, CliError, group_option, require_config

DEFAULT_CONFIG = Path("/etc/cybernetic/cloud.toml")
CALLER = "cli"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "llm", help="the LLM engine: which providers answer, ask it a question"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser(
        "check", help="ask each provider of the chain for a word, with latency"
    )
    check.add_argument("--json", action="store_true", help="print the results as JSON")
    check.add_argument(
        "--timeout", type=_seconds, default=15.0, metavar="S", help="wait per provider (default 15)"
    )
    check.set_defaults(handler=_check)
    ask = verbs.add_parser("ask", help="stream the engine's answer to a question")
    ask.add_argument("question", help="the question; with --task, the task's data as JSON")
    ask.add_argument("--provider", metavar="NAME", help="ask this provider of the chain only")
    ask.add_argument("--system", default="", metavar="TEXT", help="a system prompt")
    ask.add_argument("--max-tokens", type=_count, metavar="N", help="the answer's token limit")
    ask.add_argument(
        "--temperature", type=_temperature, metavar="X", help="0 to 2 (default: the provider's)"
    )
    ask.add_argument(
        "--task",
        choices=("classify", "decompose", "mitigate", "review_policy"),
        help="a structured request: QUESTION is its data as JSON; prints the checked answer",
    )
    ask.set_defaults(handler=_ask)
    group_option(
        parser,
        [check, ask],
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"the cloud's cloud.toml (default {DEFAULT_CONFIG} when it exists, else the "
        "built-in planner alone)",
    )


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _seconds(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _temperature(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2: {text!r}")
    return value


def _settings(args: argparse.Namespace) -> Any:
    from cloud.llm import LlmSettings  # noqa: PLC0415 - only this command loads the engine

    path: Path | None = getattr(args, "config", None)
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return LlmSettings()
        path = DEFAULT_CONFIG
    return require_config(path, CloudConfig).llm


def _engine(args: argparse.Namespace) -> Any:
    from cloud.llm import Engine  # noqa: PLC0415 - only this command loads the engine

    return Engine.from_settings(_settings(args))


def _check(args: argparse.Namespace) -> int:
    engine = _engine(args)

    async def run() -> list[Any]:
        try:
            return list(await engine.check(args.timeout))
        finally:
            await engine.aclose()

    results = asyncio.run(run())
    if args.json:
        import msgspec  # noqa: PLC0415

        print(json.dumps(msgspec.to_builtins(results), indent=2))
    else:
        for r in results:
            where = f"{r.provider} ({r.kind} {r.model})"
            if r.ok:
                print(f"{where}: answers in {r.latency_ms:.0f} ms")
            else:
                print(f"{where}: DOES NOT ANSWER: {r.detail}")
    return OK if all(r.ok for r in results) else FAILED


def _ask(args: argparse.Namespace) -> int:
    from cloud.llm import (  # noqa: PLC0415 - only this command loads the engine
        LlmError,
        Message,
        Request,
        TaskDataError,
    )

    engine = _engine(args)
    if args.provider and args.provider not in [p.name for p in engine.chain]:
        names = ", ".join(p.name for p in engine.chain)
        raise CliError(f"--provider {args.provider}: not in the chain (providers: {names})")
    data: Any = None
    if args.task:
        try:
            data = json.loads(args.question)
        except json.JSONDecodeError as exc:
            raise CliError(f"--task {args.task}: the data is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise CliError(f"--task {args.task}: the data must be a JSON object")
    request = Request(
        system=args.system,
        messages=(Message(role="user", content=args.question),),
        max_tokens=args.max_tokens,
        temperature=args.temperature,
    )

    async def run() -> int:
        try:
            if args.task:
                answer = await engine.run_task(args.task, data, caller=CALLER)
                print(json.dumps(answer.value, indent=2, ensure_ascii=False))
                _who(answer.provider, answer.fallbacks)
                return OK
            return await _stream(engine, request, args.provider)
        except TaskDataError as exc:
            raise CliError(str(exc), USAGE) from None
        except LlmError as exc:
            raise CliError(str(exc), FAILED) from None
        finally:
            await engine.aclose()

    return asyncio.run(run())


async def _stream(engine: Any, request: Any, only: str | None) -> int:
    from cloud.llm import Outcome, Restart, TextDelta, ToolCallDelta  # noqa: PLC0415

    outcome = Outcome()
    async for chunk in engine.stream(request, caller=CALLER, only=only, outcome=outcome):
        if isinstance(chunk, TextDelta):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        elif isinstance(chunk, ToolCallDelta):
            print(json.dumps({"tool_call": chunk.call.name, "arguments": chunk.call.arguments}))
        elif isinstance(chunk, Restart):
            print(f"\n[restarted on {chunk.provider}: {chunk.reason}]", file=sys.stderr)
    print()
    _who(outcome.provider, outcome.fallbacks)
    return OK


def _who(provider: str, fallbacks: Any) -> None:
    for f in fallbacks:
        print(f"passed over {f.provider}: {f.reason} ({f.detail})", file=sys.stderr)
    print(f"answered by {provider}", file=sys.stderr)
