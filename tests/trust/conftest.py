"""Fixtures for the trust tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from trust_support import Cloud, make_cloud

from amcp.runtime.settings import BrokerLink
from cybernetic.mosquitto import MosquittoBroker


@pytest.fixture
def gateway_link(broker: MosquittoBroker) -> BrokerLink:
    """The pre-enrolment account on the plain listener (the conftest's service account)."""
    return BrokerLink(
        host=broker.host, port=broker.port, username="gateway", password=broker.password("gateway")
    )


@pytest.fixture
def cloud_factory(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Callable[..., Cloud]]:
    """Clouds (CA, register, enrolment service) on the shared broker; closed after the test."""
    made: list[Cloud] = []

    def make(**kw: object) -> Cloud:
        c = make_cloud(tmp_path / f"cloud-{len(made)}", broker, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.enrolment.store.close()
