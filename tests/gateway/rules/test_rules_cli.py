"""`cybernetic patterns add|list|remove|test` on real store files and recorded readings, and
the demo's example patterns firing on readings shaped like the demo's simulated devices."""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
from pathlib import Path

import pytest

from amcp.store import LWWStore
from cybernetic.__main__ import main
from gateway.rules import PatternRule, decode_rule

EXAMPLE = Path(__file__).parents[3] / "examples" / "patterns" / "demo.toml"
T0 = 1_700_000_000_000


def demo_readings(seconds: float = 60, devices: int = 5, seed: int = 1) -> list[dict[str, object]]:
    """What cybernetic/demo.py's simulated devices publish: every 0.5 s, temp drifting from
    18-24, humidity uniform in 30-60."""
    rng = random.Random(seed)
    out = []
    temps = [rng.uniform(18, 24) for _ in range(devices)]
    for step in range(int(seconds / 0.5)):
        for d in range(devices):
            temps[d] += rng.uniform(-0.3, 0.3)
            values = {"temp": round(temps[d], 2), "humidity": round(rng.uniform(30, 60), 1)}
            out.append(
                {
                    "device": f"sensor-{d + 1:02d}",
                    "boot": "b",
                    "seq": step + 1,
                    "ts_ms": T0 + step * 500,
                    "values": values,
                }
            )
    return out


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_add_list_remove_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "s.db")
    assert (
        main(["patterns", "add", "--store", db, "hot", "--when", "temp > 30", "--action", "alert"])
        == 0
    )
    assert (
        main(
            [
                "patterns",
                "add",
                "--store",
                db,
                "hot3",
                "--window",
                "hot",
                "--count",
                "3",
                "--within",
                "10",
                "--tumbling",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["patterns", "list", "--store", db, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["hot"] == {"type": "pattern", "when": "temp > 30", "actions": ["alert"]}
    assert listed["hot3"]["kind"] == "tumbling"
    assert main(["patterns", "remove", "--store", db, "hot3", "ghost"]) == 1
    assert "not found ghost" in capsys.readouterr().out
    store = LWWStore(db, "local")
    try:
        assert set(store.items("patterns")) == {"hot"}
        assert decode_rule(store.items("patterns")["hot"]) == PatternRule(
            when="temp > 30", actions=["alert"]
        )
    finally:
        store.close()


def test_a_rule_that_does_not_compile_is_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "s.db")
    assert main(["patterns", "add", "--store", db, "bad", "--when", "temp >"]) == 2
    err = capsys.readouterr().err
    assert "rule 'bad' refused: ParseError" in err
    assert "column 7" in err
    assert main(["patterns", "add", "--store", db, "w", "--window", "ghost"]) == 2
    assert "unknown pattern 'ghost'" in capsys.readouterr().err
    assert main(["patterns", "list", "--store", db]) == 0
    assert capsys.readouterr().out == ""


def test_a_store_open_in_another_process_is_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    live = LWWStore(db, "gw-1")  # holds the -wal file, as a running gateway does
    try:
        live.put("x", "y", b"1")
        assert main(["patterns", "add", "--store", str(db), "p", "--when", "true"]) == 2
        assert "looks open" in capsys.readouterr().err
    finally:
        live.close()
    assert main(["patterns", "add", "--store", str(db), "p", "--when", "true"]) == 0
    store = LWWStore(db, "gw-1")  # written under the site the file records
    try:
        assert "p" in store.items("patterns")
    finally:
        store.close()


def test_the_example_file_adds_named_actions_inline(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    assert main(["patterns", "add", "--store", db, "--file", str(EXAMPLE)]) == 0
    store = LWWStore(db, "local")
    try:
        rule = decode_rule(store.items("patterns")["humid-3-in-10s"])
    finally:
        store.close()
    assert rule.actions[0].name == "rules.humidity.high"  # type: ignore[union-attr]


def test_replay_prints_what_would_have_fired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"device": "d", "boot": "b", "seq": s, "ts_ms": T0 + s * 1000, "values": {"temp": t}}
        for s, t in enumerate([20, 31, 32, 20, 33], 1)
    ]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    assert main(["patterns", "test", "--readings", str(path), "--when", "temp > 30"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [  # T0 + 2 s, + 3 s, + 5 s in ISO 8601 UTC
        "2023-11-14T22:13:22.000Z d seq 2: pattern test",
        "2023-11-14T22:13:23.000Z d seq 3: pattern test",
        "2023-11-14T22:13:25.000Z d seq 5: pattern test",
    ]
    assert out[-1] == "5 readings: test 3"


def test_demo_example_fires_on_the_demo_devices_from_the_cloud_readings_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "readings.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(
            "CREATE TABLE readings (device TEXT, boot TEXT, seq INTEGER, ts_ms INTEGER, "
            'received_ms INTEGER, stored_ms INTEGER, gateway TEXT, "values" TEXT)'
        )
        conn.executemany(
            "INSERT INTO readings VALUES (?, ?, ?, ?, 0, 0, 'gw', ?)",
            [
                (r["device"], r["boot"], r["seq"], r["ts_ms"], json.dumps(r["values"]))
                for r in demo_readings()
            ],
        )
        conn.commit()
    code = main(
        [
            "patterns",
            "test",
            "--readings",
            str(db),
            "--file",
            str(EXAMPLE),
            "--json",
            "--limit",
            "0",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    firings = [json.loads(line) for line in captured.out.splitlines()]
    alerts = [f for f in firings if f["rule"] == "humid-3-in-10s"]
    # every simulated device has a humid spell within a minute; each raises the alert event
    assert {f["device"] for f in alerts} == {f"sensor-{d:02d}" for d in range(1, 6)}
    assert all(f["events"][0]["name"] == "rules.humidity.high" for f in alerts)
    assert not [f for f in firings if f["rule"] == "overheat"]
    assert "600 readings" in captured.err


def test_bad_readings_input_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"device": "d"}\n')
    assert main(["patterns", "test", "--readings", str(path), "--when", "true"]) == 2
    assert "r.jsonl:1: not a reading" in capsys.readouterr().err
    assert (
        main(["patterns", "test", "--readings", str(tmp_path / "none.jsonl"), "--when", "true"])
        == 2  # a missing input file: refused (docs/cli.md)
    )
