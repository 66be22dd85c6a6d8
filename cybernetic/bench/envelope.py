"""aMCP envelope verification and replay defence against their raw library references.

Full path = :meth:`amcp.wire.Opener.verify` (size, decode, clock window, key lookup, signature,
replay check with an on-disk store); the reference is cryptography's Ed25519 verify or
``hmac.digest`` alone on the very same signing bytes, timed in the same run, interleaved.

Replay checks go through :meth:`ReplayGuard.check_many` in batches of ``--replay-batch`` (how a
receiver drains a burst of envelopes), including every flush to the on-disk store;
``replay_single_checks_per_s`` is the same traffic one :meth:`ReplayGuard.check` call at a time.
``*_cpu_*`` fields divide by this process's CPU time instead of wall time: on a shared machine
they show the code's cost without the time other processes held the CPU.
"""

from __future__ import annotations

import argparse
import hmac
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from amcp.crypto import Ed25519Signer, HmacSigner, Keyring, Signer
from amcp.replay import Check, ReplayGuard, Verdict
from amcp.wire import EnvelopeError, Opener, Reading, Sealer, TelemetryBatch
from amcp.wire.envelope import decode_frame, signing_input
from cybernetic.bench import progress

DESCRIPTION = "envelope verify (Ed25519, HMAC) vs raw crypto; replay checks and memory"
TOPIC = "amcp/v1/gw-bench/telemetry"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--readings", type=int, default=200, help="readings per batch")
    parser.add_argument("--envelopes", type=int, default=1500, help="envelopes per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--replay-checks", type=int, default=300_000)
    parser.add_argument("--nonce-fraction", type=float, default=0.5)
    parser.add_argument("--replay-batch", type=int, default=256, help="checks per check_many")
    parser.add_argument("--nonces", type=int, default=1_000_000, help="for replay_memory_mb")


def _rss_bytes() -> int:
    with Path("/proc/self/statm").open() as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _batch(n: int) -> TelemetryBatch:
    now = time.time_ns() // 1_000_000
    return TelemetryBatch(
        batch_id=os.urandom(8).hex(),
        gateway="gw-bench",
        readings=[
            Reading(
                device=f"dev-{i % 16}",
                boot="boot-1",
                seq=i,
                ts_ms=now - 1000 + i,
                values={"temp": 20.0 + i / 10, "hum": 40 + i % 7},
                received_ms=now,
            )
            for i in range(n)
        ],
    )


class _Counter:
    false_rejects = 0


def _verify_run(
    signer: Signer, batch: TelemetryBatch, n: int, state_dir: Path, counts: _Counter
) -> tuple[float, float]:
    """One run: (full-path verifies per s, raw verifies per s) on the same envelopes."""
    sealer = Sealer(signer)
    envelopes = [sealer.seal(batch, TOPIC) for _ in range(n)]
    inputs = []
    for data in envelopes:
        frame, _ = decode_frame(data)
        inputs.append(
            (signing_input(1, TOPIC.encode(), frame.header, frame.payload), frame.signature)
        )
    guard = ReplayGuard(state_dir / f"verify-{os.urandom(4).hex()}.db")
    opener = Opener(Keyring([signer.entry()]), guard)
    if isinstance(signer, Ed25519Signer):
        public = signer.private_key.public_key()

        def raw() -> None:
            for msg, sig in inputs:
                public.verify(sig, msg)
    else:
        secret = signer.entry().material

        def raw() -> None:
            for msg, _sig in inputs:
                hmac.digest(secret, msg, "sha256")

    # raw, full, raw: the reference brackets the full path, so drift in machine load
    # (these machines are shared) biases neither side
    t0 = time.perf_counter()
    raw()
    raw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for data in envelopes:
        try:
            opener.verify(data, TOPIC)
        except EnvelopeError:
            counts.false_rejects += 1
    full_rate = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    raw()
    raw_rate = 2 * n / (raw_s + time.perf_counter() - t0)
    guard.close()
    return full_rate, raw_rate


class _Replay(NamedTuple):
    per_s: float
    per_cpu_s: float
    false_positives: int


def _replay_run(checks: int, nonce_fraction: float, counts: _Counter, batch: int = 0) -> _Replay:
    """Mixed counter and nonce senders, fresh traffic only, in batches of ``batch`` checks
    (0: one call per check)."""
    now = time.time_ns() // 1_000_000
    args: list[Check] = []
    next_counter = [1] * 1000
    for i in range(checks):
        ts = now - (i % 5000)
        if int((i + 1) * nonce_fraction) > int(i * nonce_fraction):  # evenly interleaved
            args.append((f"hm:n{i % 1000:04}", ts, os.urandom(16), None, None))
        else:
            who = i % 1000
            args.append((f"ed:c{who:04}", ts, b"", 7, next_counter[who]))
            next_counter[who] += 1
    with tempfile.TemporaryDirectory() as d:
        guard = ReplayGuard(Path(d) / "replay.db", expected_nonces=checks)
        check = guard.check
        accept = Verdict.ACCEPT
        t0, c0 = time.perf_counter(), time.process_time()
        if batch:
            check_many = guard.check_many
            for i in range(0, checks, batch):
                verdicts = check_many(args[i : i + batch], now)
                counts.false_rejects += len(verdicts) - verdicts.count(accept)
        else:
            for sender, ts, nonce, epoch, counter in args:
                if check(sender, ts, nonce, epoch, counter, now) is not accept:
                    counts.false_rejects += 1
        guard.flush()
        rate = checks / (time.perf_counter() - t0)
        cpu_rate = checks / max(time.process_time() - c0, 1e-9)
        missed = sum(
            check(s, ts, nonce, e, c, now) is accept
            for s, ts, nonce, e, c in args[:: max(1, checks // 2000)]
        )
        if missed:
            raise AssertionError(f"{missed} replays were accepted")
        fps = guard.false_positives
        guard.close()
    return _Replay(rate, cpu_rate, fps)


def _replay_path(checks: int, batch: int, *, nonce: bool) -> float:
    """Checks per second for one path alone (all counter senders, or all nonce senders)."""
    return _replay_run(checks, 1.0 if nonce else 0.0, _Counter(), batch).per_s


def _replay_memory(nonces: int, counts: _Counter) -> float:
    """Resident growth while the guard holds ``nonces`` nonces of one window (store on disk)."""
    with tempfile.TemporaryDirectory() as d:
        before = _rss_bytes()
        guard = ReplayGuard(Path(d) / "mem.db", expected_nonces=nonces)
        now = time.time_ns() // 1_000_000
        step = 4096
        for start in range(0, nonces, step):
            items: list[Check] = [
                ("hm:mem", now - i % 60_000, os.urandom(16), None, None)
                for i in range(start, min(nonces, start + step))
            ]
            verdicts = guard.check_many(items, now)
            counts.false_rejects += len(verdicts) - verdicts.count(Verdict.ACCEPT)
        guard.flush()
        grown = _rss_bytes() - before
        guard.close()
    return grown / 1e6


def run(args: argparse.Namespace) -> dict[str, object]:
    counts = _Counter()
    progress(f"replay memory: {args.nonces} nonces in one window")
    memory_mb = _replay_memory(args.nonces, counts)
    batch = _batch(args.readings)
    ed = Ed25519Signer("gw-bench", Ed25519PrivateKey.generate())
    hm = HmacSigner("gw-bench", os.urandom(32))
    ed_full, ed_raw, hm_full, hm_raw, fps = [], [], [], [], 0
    replay: list[_Replay] = []
    single: list[float] = []
    counter_only: list[float] = []
    nonce_only: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.runs):
            progress(f"run {r + 1}/{args.runs}: ed25519, hmac, replay")
            f, raw = _verify_run(ed, batch, args.envelopes, Path(d), counts)
            ed_full.append(f)
            ed_raw.append(raw)
            f, raw = _verify_run(hm, batch, args.envelopes * 4, Path(d), counts)
            hm_full.append(f)
            hm_raw.append(raw)
            mixed = _replay_run(args.replay_checks, args.nonce_fraction, counts, args.replay_batch)
            replay.append(mixed)
            fps += mixed.false_positives
            single.append(_replay_run(args.replay_checks, args.nonce_fraction, counts).per_s)
            counter_only.append(_replay_path(args.replay_checks, args.replay_batch, nonce=False))
            nonce_only.append(_replay_path(args.replay_checks, args.replay_batch, nonce=True))
    med = statistics.median
    return {
        "readings_per_batch": args.readings,
        "runs": args.runs,
        "ed25519_verify_per_s": round(med(ed_full)),
        "raw_ed25519_verify_per_s": round(med(ed_raw)),
        "ratio_ed25519": round(med(f / r for f, r in zip(ed_full, ed_raw, strict=True)), 3),
        "hmac_verify_per_s": round(med(hm_full)),
        "raw_hmac_per_s": round(med(hm_raw)),
        "ratio_hmac": round(med(f / r for f, r in zip(hm_full, hm_raw, strict=True)), 3),
        "replay_checks_per_s": round(med(r.per_s for r in replay)),
        "replay_checks_per_cpu_s": round(med(r.per_cpu_s for r in replay)),
        "replay_single_checks_per_s": round(med(single)),
        "replay_batch": args.replay_batch,
        "replay_nonce_fraction": args.nonce_fraction,
        "replay_counter_only_checks_per_s": round(med(counter_only)),
        "replay_nonce_only_checks_per_s": round(med(nonce_only)),
        "replay_memory_mb": round(memory_mb, 2),
        "replay_memory_nonces": args.nonces,
        "bloom_false_positives_confirmed": fps,
        "false_rejects": counts.false_rejects,
    }
