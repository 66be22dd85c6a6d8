"""Signed policy bundles: signing and verification with real Ed25519 keys, every refusal
reason, and the gateway's watcher on a real CRDT store swapping a real wasm agent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from amcp import bundles
from amcp.bundles import NAMESPACE, BundleRefusedError
from amcp.crypto.keyring import Keyring
from amcp.crypto.keys import Ed25519Signer, HmacSigner, now_ms
from amcp.runtime.supervisor import ChildContext
from amcp.store import Store
from amcp.wire.messages import PolicyBundle
from amcp.wire.telemetry import EventRecord, Reading
from gateway.policy_bundles import APPLIED_KEY, APPLIED_NAMESPACE, PolicyBundles, pass_all_stage
from wasm import compile_policy

DENY_HOT = 'policy "hot" version 1\nrule hot when temp > 30 then deny because "too hot"\n'
DENY_ALL = 'policy "closed" version 1\ndefault deny because "closed"\n'
CLOUD = Ed25519Signer.generate("cloud")
DAY = 86_400_000


def bundle(version: int, source: str = DENY_HOT, **fields: object) -> PolicyBundle:
    base: dict[str, object] = {
        "name": "hot",
        "version": version,
        "expires_ms": now_ms() + DAY,
        "source": source,
    }
    if "body" not in fields:
        base["body"] = compile_policy(source).wasm
    return PolicyBundle(**(base | fields))  # type: ignore[arg-type]


def keyring() -> Keyring:
    return Keyring([CLOUD.entry()])


def reading(temp: float, seq: int = 1) -> Reading:
    return Reading(device="d1", boot="b", seq=seq, ts_ms=1_000, values={"temp": temp})


# -- sign and verify -------------------------------------------------------------------------
def test_a_signed_bundle_verifies_and_round_trips() -> None:
    b = bundle(3, zone="north")
    got = bundles.verify(bundles.sign(b, CLOUD), keyring(), now_ms())
    assert got == b


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda row: msgspec.structs.replace(row, body=row.body + b"\x00"), "bad_signature"),
        (lambda row: msgspec.structs.replace(row, signature=bytes(64)), "bad_signature"),
        (lambda row: msgspec.structs.replace(row, key_id="ed:0000000000000000"), "unknown_key"),
    ],
)
def test_a_tampered_row_is_refused(tamper: object, reason: str) -> None:
    row = msgspec.msgpack.decode(bundles.sign(bundle(1), CLOUD), type=bundles.SignedBundle)
    forged = msgspec.msgpack.encode(tamper(row))  # type: ignore[operator]
    with pytest.raises(BundleRefusedError) as info:
        bundles.verify(forged, keyring(), now_ms())
    assert info.value.reason == reason


def test_another_key_an_hmac_key_and_a_revoked_key_are_unknown() -> None:
    other = Ed25519Signer.generate("cloud")
    with pytest.raises(BundleRefusedError, match="unknown_key"):
        bundles.verify(bundles.sign(bundle(1), other), keyring(), now_ms())
    link = HmacSigner("cloud", bytes(range(32)))
    with pytest.raises(BundleRefusedError, match="not an Ed25519"):
        bundles.verify(bundles.sign(bundle(1), link), Keyring([link.entry()]), now_ms())
    ring = keyring()
    ring.revoke(CLOUD.key_id, now_ms() - 1)
    with pytest.raises(BundleRefusedError, match="revoked"):
        bundles.verify(bundles.sign(bundle(1), CLOUD), ring, now_ms())


def test_an_expired_bundle_is_refused_unless_expiry_is_not_asked() -> None:
    data = bundles.sign(bundle(1, expires_ms=now_ms() - 1), CLOUD)
    with pytest.raises(BundleRefusedError) as info:
        bundles.verify(data, keyring(), now_ms())
    assert info.value.reason == "expired"
    assert bundles.verify(data, keyring(), now_ms(), expiry=False).version == 1


@pytest.mark.parametrize(
    "fields",
    [{"name": ""}, {"name": "a@b"}, {"version": 0}, {"zone": "*"}, {"body": b"", "source": ""}],
)
def test_a_bundle_no_gateway_could_apply_is_not_signed(fields: dict[str, object]) -> None:
    with pytest.raises(BundleRefusedError) as info:
        bundles.sign(msgspec.structs.replace(bundle(1), **fields), CLOUD)
    assert info.value.reason == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_are_refused_as_malformed_or_worse(data: bytes) -> None:
    with pytest.raises(BundleRefusedError) as info:
        bundles.verify(data, keyring(), now_ms())
    assert info.value.reason in {"malformed", "unknown_key", "bad_signature"}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.text(max_size=20), st.binary(max_size=70))
def test_fuzz_rows_of_the_right_shape_never_verify(body: bytes, key_id: str, sig: bytes) -> None:
    for kid in (key_id, CLOUD.key_id):
        row = msgspec.msgpack.encode(bundles.SignedBundle(body, kid, sig))
        with pytest.raises(BundleRefusedError) as info:
            bundles.verify(row, keyring(), now_ms())
        assert info.value.reason in {"unknown_key", "bad_signature"}


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 400), st.integers(0, 255))
def test_fuzz_one_flipped_byte_of_a_signed_row_is_refused(at: int, xor: int) -> None:
    data = bytearray(SIGNED)
    at %= len(data)
    data[at] ^= xor or 1
    with pytest.raises(BundleRefusedError):
        bundles.verify(bytes(data), keyring(), now_ms())


SIGNED = bundles.sign(bundle(1, source=DENY_ALL, body=b""), CLOUD)


# -- the gateway's watcher -------------------------------------------------------------------
class Harness:
    def __init__(self, store: Store, zone: str = "north") -> None:
        self.events: list[EventRecord] = []
        self.stage = pass_all_stage("keep", None)
        self.watcher = PolicyBundles(
            store, self.stage, keyring(), zone=zone, report=self.events.extend
        )
        self.store = store

    async def push(self, b: PolicyBundle, signer: Ed25519Signer = CLOUD) -> bool:
        await self.store.put(NAMESPACE, bundles.bundle_key(b.name, b.zone), bundles.sign(b, signer))
        return await self.watcher.refresh()

    def kept(self, temp: float) -> bool:
        return bool(self.stage([reading(temp)]))

    def refused(self) -> list[str]:
        return [e.attrs["reason"] for e in self.events if e.name == "policy.bundle.refused"]


@pytest.fixture
async def store(tmp_path: Path) -> object:
    async with Store(tmp_path / "store.sqlite3", site="gw-1") as s:
        yield s


async def test_a_bundle_is_applied_and_every_refusal_keeps_the_running_policy(
    store: Store,
) -> None:
    h = Harness(store)
    assert h.kept(40.0)  # pass-all until a bundle comes
    assert await h.push(bundle(2))
    assert not h.kept(40.0)
    assert h.kept(20.0)
    assert h.watcher.applied is not None
    assert h.watcher.applied.version == 2
    assert h.watcher.swap_ms < 500

    # an older version (a replay of the row), an expired one, a forged one, one signed by
    # a stranger, and wasm that does not load: each refused with its reason
    assert not await h.push(bundle(1, source=DENY_ALL))
    assert not await h.push(bundle(5, source=DENY_ALL, expires_ms=now_ms() - 1))
    row = msgspec.msgpack.decode(
        bundles.sign(bundle(6, source=DENY_ALL), CLOUD), type=bundles.SignedBundle
    )
    await store.put(
        NAMESPACE,
        "hot@*",
        msgspec.msgpack.encode(msgspec.structs.replace(row, signature=bytes(64))),
    )
    assert not await h.watcher.refresh()
    assert not await h.push(bundle(7, source=DENY_ALL), Ed25519Signer.generate("cloud"))
    assert not await h.push(bundle(8, body=b"\x00asm\x01\x00\x00\x00junk", source=""))
    assert not await h.push(bundle(9, body=b"", source="policy oops"))
    assert h.refused() == [
        "older_version",
        "expired",
        "bad_signature",
        "unknown_key",
        "invalid_wasm",
        "invalid_wasm",
    ]
    assert h.watcher.refusals["invalid_wasm"] == 2
    assert h.watcher.applied.version == 2
    assert not h.kept(40.0)  # the running policy stayed throughout
    assert h.kept(20.0)

    # a row is judged once, however often it is seen
    assert not await h.watcher.refresh()
    assert len(h.refused()) == 6
    assert await h.push(bundle(10, source=DENY_ALL))
    assert not h.kept(20.0)
    assert [e.attrs["version"] for e in h.events if e.name == "policy.bundle.applied"] == [2, 10]


async def test_zone_targeting_and_the_newest_bundle_for_the_zone_wins(store: Store) -> None:
    h = Harness(store, zone="north")
    assert not await h.push(bundle(3, source=DENY_ALL, zone="south"))  # not ours: ignored
    assert h.kept(20.0)
    assert h.refused() == []
    assert await h.push(bundle(4, zone=""))  # every zone's
    assert not h.kept(40.0)
    assert h.kept(20.0)
    assert await h.push(bundle(5, source=DENY_ALL, zone="north"))  # our zone's, newer
    assert not h.kept(20.0)
    assert not await h.push(bundle(6, zone="south"))
    assert h.watcher.applied is not None
    assert h.watcher.applied.version == 5


async def test_the_applied_bundle_survives_a_restart_and_a_replay_while_down(
    store: Store,
) -> None:
    h = Harness(store)
    first = bundle(1)
    await h.push(first)
    await h.push(bundle(2, source=DENY_ALL))
    assert await store.get(APPLIED_NAMESPACE, APPLIED_KEY) is not None
    # while the gateway is down, the row goes back to version 1 (a replay)
    await store.put(NAMESPACE, "hot@*", bundles.sign(first, CLOUD))

    again = Harness(store)
    registry = CollectorRegistry()
    again.watcher.register(registry)
    await again.watcher._restore()  # the start-up step of run()
    assert not again.kept(20.0)  # version 2 runs again at once
    assert not await again.watcher.refresh()
    assert again.refused() == ["older_version"]
    assert (
        registry.get_sample_value(
            "cybernetic_policy_bundle_refusals_total", {"reason": "older_version"}
        )
        == 1
    )
    assert registry.get_sample_value("cybernetic_policy_bundle_version") == 2


async def test_the_watcher_follows_store_changes_as_a_child(store: Store) -> None:
    h = Harness(store)
    task = asyncio.create_task(h.watcher.run(ChildContext("policy")))
    try:
        await asyncio.sleep(0.05)
        await store.put(NAMESPACE, "hot@*", bundles.sign(bundle(1), CLOUD))
        await asyncio.wait_for(h.watcher.wait_applied(1), 5)
        assert not h.kept(40.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
