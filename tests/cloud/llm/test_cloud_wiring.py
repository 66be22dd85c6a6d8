"""``cloud run`` builds the engine from [llm]: its metrics are on the cloud's registry."""

from __future__ import annotations

from pathlib import Path

import msgspec
from prometheus_client import generate_latest

from amcp.runtime.membroker import MemoryBroker
from cloud.app import Cloud
from cloud.config import CloudConfig


def test_the_cloud_has_an_engine_with_its_metrics(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    config = msgspec.convert(
        {
            "cloud": {"state_dir": str(tmp_path / "state")},
            "links": {"secrets_dir": str(links)},
            "llm": {
                "providers": [
                    {"kind": "ollama", "model": "llama3.2", "base_url": "http://127.0.0.1:9"}
                ]
            },
        },
        CloudConfig,
    )
    cloud = Cloud(config, transport=MemoryBroker().transport)
    assert [p.name for p in cloud.llm.chain] == ["ollama", "planner"]
    text = generate_latest(cloud.registry).decode()
    assert "# HELP cybernetic_llm_calls_total" in text
    assert "# HELP cybernetic_llm_fallbacks_total" in text
    cloud.links.close()
