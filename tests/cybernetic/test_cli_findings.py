"""The command-line findings of issue 17, each run as a user would (a subprocess, real files).

Exit codes are those of docs/cli.md: 2 refused (nothing done), 1 failed or done in part,
3 not reachable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from amcp.store import LWWStore
from cybernetic.cli import EXIT_CODES, build_parser
from cybernetic.mosquitto import free_port
from gateway.rules import STORE_FILE, PatternRule, WindowRule, encode_rule

CLI = [sys.executable, "-m", "cybernetic"]
EXAMPLE = Path(__file__).parents[2] / "examples" / "patterns" / "demo.toml"
README = Path(__file__).parents[2] / "README.md"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
T0 = 1_700_000_000_000


def cli(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYBERNETIC")}
    return subprocess.run(
        [*CLI, *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def refused(out: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one-line error of a command that failed with ``code``."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def foreign_db(path: Path, *, wal: bool = False) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as db:
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.execute("INSERT INTO invoices (total) VALUES (9.5)")
        db.commit()
    return path


def store_with(path: Path, rules: dict[str, bytes]) -> Path:
    store = LWWStore(path, "gw-1")
    try:
        for rid, doc in rules.items():
            store.put("patterns", rid, doc)
    finally:
        store.close()
    return path


def readings_jsonl(path: Path) -> Path:
    rows = [
        {"device": "d", "boot": "b", "seq": s, "ts_ms": T0 + s * 1000, "values": {"temp": t}}
        for s, t in enumerate([20, 31, 32], 1)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- the exit codes are documented ----------------------------------------------------------
def test_help_lists_the_exit_codes_and_the_docs_agree() -> None:
    out = cli("--help")
    assert out.returncode == 0
    assert "exit codes:" in out.stdout
    docs = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    for code, text in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s+{re.escape(text)}$", out.stdout, re.MULTILINE), code
        assert f"| {code} |" in docs, code


# -- patterns test --readings on files that hold no readings ------------------------------
@pytest.mark.parametrize("kind", ["crdt-store", "other-db", "text-named-sqlite3", "bad-columns"])
def test_patterns_test_refuses_files_that_are_not_reading_stores(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "readings.sqlite3"
    if kind == "crdt-store":
        store_with(path, {})
    elif kind == "other-db":
        foreign_db(path)
    elif kind == "text-named-sqlite3":
        path.write_text(README.read_text())
    else:
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE readings (device TEXT, at TEXT)")
            db.execute("INSERT INTO readings VALUES ('d', 'now')")
            db.commit()
    line = refused(cli("patterns", "test", "--readings", path, "--when", "temp > 30"))
    assert str(path) in line
    assert "no such table" not in line
    assert "file is not a database" not in line
    assert "readings.sqlite3" in line  # says what to give instead
    assert not Path(f"{path}-wal").exists()


def test_patterns_test_prints_iso_8601_utc_times(tmp_path: Path) -> None:
    readings = readings_jsonl(tmp_path / "r.jsonl")
    out = cli("patterns", "test", "--readings", readings, "--when", "temp > 30")
    assert out.returncode == 0, out.stderr
    firings = out.stdout.splitlines()[:-1]
    assert firings == [
        "2023-11-14T22:13:22.000Z d seq 2: pattern test",
        "2023-11-14T22:13:23.000Z d seq 3: pattern test",
    ]
    assert all(ISO.match(line) for line in firings)
    out = cli("patterns", "test", "--readings", readings, "--when", "temp > 30", "--json")
    first = json.loads(out.stdout.splitlines()[0])
    assert first["time"] == "2023-11-14T22:13:22.000Z"
    assert first["ts_ms"] == T0 + 2000


# -- patterns list --store on files that are not stores -------------------------------------
def test_patterns_list_refuses_a_text_file() -> None:
    line = refused(cli("patterns", "list", "--store", README))
    assert "not a CRDT store" in line
    assert "file is not a database" not in line


@pytest.mark.parametrize("wal", [False, True])
def test_patterns_list_never_writes_into_a_foreign_database(tmp_path: Path, wal: bool) -> None:
    db = foreign_db(tmp_path / "cloud.sqlite3", wal=wal)
    before = db.read_bytes()
    for verb in (["list"], ["remove", "x"], ["add", "x", "--when", "temp > 1"]):
        line = refused(cli("patterns", *verb, "--store", db))
        assert "not a CRDT store" in line
        assert "nothing read or written" in line
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cloud.sqlite3"]  # no -wal, -shm
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    assert tables == ["invoices"]


def test_patterns_list_leaves_a_store_ready_for_add(tmp_path: Path) -> None:
    """A read-only reader leaves -wal/-shm behind, which `add` took for a running gateway."""
    db = store_with(tmp_path / STORE_FILE, {"hot": encode_rule(PatternRule(when="temp > 30"))})
    out = cli("patterns", "list", "--store", db)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["hot", "pattern"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE_FILE]
    assert cli("patterns", "add", "--store", db, "cold", "--when", "temp < 5").returncode == 0


# -- patterns remove and the rules that depend on a rule ----------------------------------
def test_patterns_remove_refuses_while_a_window_or_situation_depends(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite3"
    assert cli("patterns", "add", "--store", db, "--file", EXAMPLE).returncode == 0
    before = cli("patterns", "list", "--store", db, "--json").stdout

    line = refused(cli("patterns", "remove", "--store", db, "humid"))
    assert "'humid-3-in-10s' uses 'humid'" in line
    line = refused(cli("patterns", "remove", "--store", db, "warm"))
    assert "'damp-and-warm' uses 'warm'" in line
    line = refused(cli("patterns", "remove", "--store", db, "humid", "humid-3-in-10s"))
    assert "'damp-and-warm' uses 'humid-3-in-10s'" in line
    assert cli("patterns", "list", "--store", db, "--json").stdout == before  # nothing removed

    out = cli("patterns", "remove", "--store", db, "humid", "humid-3-in-10s", "damp-and-warm")
    assert out.returncode == 0, out.stderr
    left = json.loads(cli("patterns", "list", "--store", db, "--json").stdout)
    assert sorted(left) == ["overheat", "warm"]


def test_patterns_remove_of_ids_not_there_says_so_and_exits_1(tmp_path: Path) -> None:
    db = store_with(
        tmp_path / "s.sqlite3",
        {
            "hot": encode_rule(PatternRule(when="temp > 30")),
            "hot3": encode_rule(WindowRule(pattern="hot", count=3, within_s=10)),
        },
    )
    out = cli("patterns", "remove", "--store", db, "hot3", "ghost")
    assert refused(out, 1) == "error: not in the store: ghost (see: cybernetic patterns list)"
    assert out.stdout.splitlines() == ["removed hot3", "not found ghost"]


# -- intent send: a missing secret file is not an unreachable broker ------------------------
def _cloud_toml(tmp: Path, **broker: object) -> Path:
    links = tmp / "links"
    links.mkdir(exist_ok=True)
    path = tmp / "cloud.toml"
    path.write_text(
        tomli_w.dumps(
            {
                "cloud": {"state_dir": str(tmp / "cloud")},
                "broker": {"port": free_port(), "username": "cloud", **broker},
                "links": {"secrets_dir": str(links)},
            }
        )
    )
    return path


def test_intent_send_names_a_missing_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "secrets" / "cloud.password"
    config = _cloud_toml(tmp_path, password_file=str(secret))
    line = refused(cli("intent", "send", "pump.start", "-c", config))
    assert f"password file {secret}" in line
    assert "password_file" in line
    assert "cannot reach" not in line


def test_intent_send_names_a_missing_link_secrets_directory(tmp_path: Path) -> None:
    config = _cloud_toml(tmp_path, password="pw")
    (tmp_path / "links").rmdir()
    line = refused(cli("intent", "-c", config, "send", "pump.start"))  # -c before the verb
    assert f"link secrets directory {tmp_path / 'links'}" in line
    line = refused(cli("intent", "send", "pump.start", "-c", config, "--gateway", "gw-9"))
    assert "link secrets directory" in line


def test_intent_send_to_a_broker_that_is_not_there_exits_3(tmp_path: Path) -> None:
    config = _cloud_toml(tmp_path, password="pw")
    line = refused(cli("intent", "send", "pump.start", "-c", config, "--wait", "1"), 3)
    assert "cannot reach the cloud broker at 127.0.0.1:" in line


# -- pki revoke of an id that is not enrolled ----------------------------------------------
def test_pki_revoke_of_an_unknown_gateway_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert cli("pki", "init", "--dir", pki).returncode == 0  # --dir after the verb
    assert cli("pki", "token", "--gateway", "gw-1", "--dir", pki).returncode == 0
    before = files_of(pki)
    line = refused(cli("pki", "--dir", pki, "revoke", "ghost"))
    assert "gateway 'ghost' is not enrolled" in line
    assert "nothing revoked" in line
    line = refused(cli("pki", "revoke", "gw-1", "--dir", pki))
    assert "only an enrolment token is bound to it" in line
    assert files_of(pki) == before


# -- devices list without a password file --------------------------------------------------
def test_devices_list_without_a_password_file_is_an_error(tmp_path: Path) -> None:
    passwd = tmp_path / "devices.passwd"
    line = refused(cli("devices", "list", "--passwd", passwd))
    assert f"no device password file at {passwd}" in line
    passwd.write_text("")
    out = cli("devices", "--passwd", passwd, "list")
    assert out.returncode == 0
    assert out.stdout == ""
    assert out.stderr.strip() == f"no device accounts in {passwd}"
    passwd.write_text("gateway:$7$x\nsensor-1:$7$y\n")
    assert cli("devices", "list", "--passwd", passwd).stdout == "sensor-1\n"


# -- options before or after the verb ------------------------------------------------------
def test_group_options_work_before_and_after_the_verb(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("keys", "gen", "--dir", a, "--node", "gw-a").returncode == 0
    assert cli("keys", "--dir", b, "gen", "--node", "gw-b").returncode == 0
    assert cli("keys", "show", "--dir", a).stdout.startswith("node gw-a")
    assert cli("keys", "--dir", a, "show").stdout.startswith("node gw-a")
    # given on both sides, the verb's wins
    assert cli("keys", "--dir", a, "show", "--dir", b).stdout.startswith("node gw-b")
    # -c of the gateway and the cloud, and required on either side
    missing = tmp_path / "missing.toml"
    for argv in (["gateway", "run", "-c", missing], ["gateway", "-c", missing, "run"]):
        assert refused(cli(*argv)).startswith(f"{missing}: cannot read")
    for argv in (["cloud", "run", "-c", missing], ["cloud", "--config", missing, "run"]):
        assert refused(cli(*argv)).startswith(f"{missing}: cannot read")
    assert "required: -c/--config" in refused(cli("gateway", "run"))


def test_patterns_take_the_gateway_config_before_or_after_the_verb(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store_with(state / STORE_FILE, {"hot": encode_rule(PatternRule(when="temp > 30"))})
    config = tmp_path / "gateway.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "gateway": {"id": "gw-1", "state_dir": str(state)},
                "uplink": {"link_secret_file": str(tmp_path / "link.secret")},
            }
        )
    )
    for argv in (["patterns", "list", "-c", config], ["patterns", "-c", config, "list"]):
        out = cli(*argv)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("hot ")
    line = refused(cli("patterns", "-c", config, "list", "--store", state / STORE_FILE))
    assert "not both" in line


# -- bench options say what they are ---------------------------------------------------------
def test_every_bench_option_has_a_help_text_with_its_default() -> None:
    parser = build_parser("bench")
    bench = next(a for a in parser._actions if a.dest == "command").choices["bench"]  # type: ignore[index]
    names = next(a for a in bench._actions if a.dest == "bench_name").choices
    assert len(names) >= 7
    for name, sub in names.items():
        for action in sub._actions:
            if not action.option_strings or action.dest in {"help", "json"}:
                continue
            assert action.help, (name, action.dest)
            assert action.help.replace(" ", "_") != action.dest, (name, action.dest)
            assert "(default %(default)s)" in action.help, (name, action.dest)
    out = cli("bench", "store", "--runs", "0")
    assert "must be at least 1" in refused(out)
