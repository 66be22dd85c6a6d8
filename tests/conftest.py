"""Shared fixtures: real Mosquitto brokers with the shipped configuration, temporary state.

Each test that needs a broker gets its own topic prefix (``topic`` fixture); tests that stop
or restart a broker take ``broker_factory`` and get a private one, so an outage in one test
never touches another (tests run in parallel under pytest-xdist).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from cybernetic.mosquitto import MosquittoBroker

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
    print_blob=True,
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

SERVICE_ACCOUNTS = {"gateway": "gateway-test-secret", "cloud": "cloud-test-secret"}


def _new_broker(state_dir: Path) -> MosquittoBroker:
    broker = MosquittoBroker(state_dir)
    for user, password in SERVICE_ACCOUNTS.items():
        broker.add_user(user, password)
    broker.start()
    return broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A broker shared by the tests of one xdist worker. Never stop it in a test."""
    b = _new_broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.stop()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[[], MosquittoBroker]]:
    """Private brokers for tests that stop, kill or restart them."""
    made: list[MosquittoBroker] = []

    def make() -> MosquittoBroker:
        b = _new_broker(tmp_path / f"mosquitto-{len(made)}")
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def topic() -> str:
    """A topic prefix unique to this test."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    """A PostgreSQL server databases may be made on: 127.0.0.1:5432 when it lets us in,
    else a private cluster for the session (cybernetic.postgres)."""
    from cybernetic.postgres import admin_dsn  # noqa: PLC0415 - only PostgreSQL tests pay

    with admin_dsn() as dsn:
        yield dsn


@pytest.fixture
def pg_dsn(pg_admin: str) -> Iterator[str]:
    """A new database of this test's own, dropped after it."""
    from cybernetic.postgres import scratch_database  # noqa: PLC0415

    with scratch_database(pg_admin, "test") as dsn:
        yield dsn
