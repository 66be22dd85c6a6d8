"""`cybernetic llm check|ask` in a subprocess, against a local OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.cloud.llm.support import KEY
from tests.cloud.llm.wire import Reply, ThreadedWireServer, error, openai_chunks

CLI = [sys.executable, "-m", "cybernetic"]


def _config(tmp_path: Path, *providers: str) -> Path:
    path = tmp_path / "cloud.toml"
    path.write_text("\n".join(providers))
    return path


def _provider(url: str, name: str) -> str:
    return (
        f'[[llm.providers]]\nkind = "openai"\nname = "{name}"\nmodel = "m"\n'
        f'base_url = "{url}"\nkey_env = "CLI_TEST_LLM_KEY"\nretries = 0\n'
    )


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYBERNETIC")}
    env["CLI_TEST_LLM_KEY"] = KEY
    return subprocess.run(
        [*CLI, "llm", *argv], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_ask_streams_the_answer_and_says_who_answered(tmp_path: Path) -> None:
    with ThreadedWireServer(Reply(chunks=openai_chunks(["Valves ", "close."]))) as srv:
        config = _config(tmp_path, _provider(srv.url, "local"))
        out = _run("ask", "-c", str(config), "--max-tokens", "20", "what do valves do?")
        seen = srv.seen[0]
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Valves close.\n"
    assert "answered by local" in out.stderr
    assert seen.json()["max_tokens"] == 20
    assert seen.json()["messages"] == [{"role": "user", "content": "what do valves do?"}]
    assert KEY not in out.stderr + out.stdout


def test_ask_falls_back_to_the_planner_and_keeps_the_key_out(tmp_path: Path) -> None:
    echo = error(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})
    with ThreadedWireServer(echo) as srv:
        config = _config(tmp_path, _provider(srv.url, "remote"))
        out = _run(
            "ask",
            "-c",
            str(config),
            "--task",
            "classify",
            json.dumps({"text": "a fan is noisy", "labels": ["fan.off", "valve.close"]}),
        )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["label"] == "fan.off"
    assert "passed over remote: auth" in out.stderr
    assert "answered by planner" in out.stderr
    assert KEY not in out.stderr + out.stdout
    assert "[redacted]" in out.stderr


def test_ask_bad_task_data_is_one_line(tmp_path: Path) -> None:
    out = _run("ask", "-c", str(_config(tmp_path)), "--task", "mitigate", '{"kind": 3}')
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: task mitigate: Expected `str`, got `int` - at `$.kind`"
    ]


def test_check_names_who_answers(tmp_path: Path) -> None:
    with ThreadedWireServer(Reply(chunks=openai_chunks(["OK"]))) as srv:
        config = _config(tmp_path, _provider(srv.url, "up"), _provider(_dead_url(), "down"))
        out = _run("check", "-c", str(config), "--json")
    assert out.returncode == 1, out.stderr
    results = {r["provider"]: r for r in json.loads(out.stdout)}
    assert results["up"]["ok"] is True
    assert results["down"]["ok"] is False
    assert "unreachable" in results["down"]["detail"]
    assert results["planner"]["ok"] is True
