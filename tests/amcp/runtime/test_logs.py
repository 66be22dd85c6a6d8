"""Logs: ISO 8601 UTC timestamps, JSON for files and journald, text for terminals, start-up
and shutdown lines, secrets redacted. Real log records through real handlers and streams."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from amcp import __version__
from amcp.runtime.logs import (
    REDACTED,
    JsonFormatter,
    TextFormatter,
    iso_utc,
    log_shutdown,
    log_startup,
    parse_timestamp,
    set_level,
    setup_logging,
)
from amcp.runtime.settings import LogSettings

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    """setup_logging replaces the root handlers (pytest's own among them): put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_iso_utc_is_iso_8601_in_utc_with_milliseconds() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1_700_000_000.1239) == "2023-11-14T22:13:20.123Z"
    now = time.time()
    text = iso_utc(now)
    assert ISO.match(text)
    assert abs(parse_timestamp(text) - now) < 0.001
    assert datetime.fromisoformat(text).tzinfo == UTC


def test_json_lines_carry_an_iso_timestamp_the_message_and_the_fields() -> None:
    out = io.StringIO()
    setup_logging("debug", fmt="json", stream=out)
    before = time.time()
    logging.getLogger("gateway.uplink").info(
        "uplink connected", extra={"host": "cloud.example", "port": 8883}
    )
    logging.getLogger("gateway.uplink").debug("detail %s", "x", extra={"path": Path("/a b")})
    first, second = (json.loads(line) for line in _lines(out))
    assert ISO.match(first["ts"])
    assert abs(parse_timestamp(first["ts"]) - before) < 1
    assert first == {
        "ts": first["ts"],
        "level": "info",
        "logger": "gateway.uplink",
        "msg": "uplink connected",
        "host": "cloud.example",
        "port": 8883,
    }
    assert second["msg"] == "detail x"
    assert second["path"] == "/a b"
    assert second["level"] == "debug"


def test_json_keeps_the_separators_log_readers_match_on() -> None:
    """Tests and tools match lines like ``"child": "outbox"`` in the daemons' JSON logs."""
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    logging.getLogger("amcp.runtime.supervisor").warning("child failed", extra={"child": "outbox"})
    line = _lines(out)[0]
    assert '"msg": "child failed"' in line
    assert '"child": "outbox"' in line


def test_text_lines_are_one_readable_line_with_key_value_fields() -> None:
    out = io.StringIO()
    setup_logging(fmt="text", stream=out)
    logging.getLogger("gateway.ingest").warning(
        "payload refused",
        extra={"reason": "bad_shape", "detail": "values must be an object", "n": 3, "ok": True},
    )
    (line,) = _lines(out)
    stamp, rest = line.split(" ", 1)
    assert ISO.match(stamp)
    assert rest == (
        'WARNING gateway.ingest: payload refused reason=bad_shape detail="values must be an '
        'object" n=3 ok=true'
    )


def test_text_values_that_are_not_strings_are_compact_json() -> None:
    out = io.StringIO()
    setup_logging(fmt="text", stream=out)
    logging.getLogger("x").info("m", extra={"d": {"a": [1, 2]}, "none": None, "empty": ""})
    assert _lines(out)[0].endswith('x: m d={"a":[1,2]} none=null empty=""')


def test_text_level_names_are_aligned() -> None:
    out = io.StringIO()
    setup_logging(fmt="text", stream=out)
    logging.getLogger("x").info("a")
    logging.getLogger("x").error("b")
    info, error = (line.split(" ", 1)[1] for line in _lines(out))
    assert info == "INFO  x: a"
    assert error == "ERROR x: b"


def _boom() -> None:
    raise ValueError("boom")


def test_a_traceback_is_kept_in_both_formats() -> None:
    for fmt in ("json", "text"):
        out = io.StringIO()
        setup_logging(fmt=fmt, stream=out)  # type: ignore[arg-type]
        try:
            _boom()
        except ValueError:
            logging.getLogger("t").exception("it failed")
        text = out.getvalue()
        assert "ValueError: boom" in text
        if fmt == "json":
            assert "ValueError: boom" in json.loads(text)["exc"]


def test_auto_is_json_for_a_file_or_pipe_and_text_on_a_terminal(tmp_path: Path) -> None:
    with (tmp_path / "daemon.log").open("w") as file:
        setup_logging(fmt="auto", stream=file)
        logging.getLogger("gw").info("to a file")
    assert json.loads((tmp_path / "daemon.log").read_text())["msg"] == "to a file"

    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w", closefd=True) as tty, os.fdopen(primary, "rb") as reader:
        assert tty.isatty()
        setup_logging(fmt="auto", stream=tty)
        logging.getLogger("gw").info("to a terminal", extra={"k": "v"})
        tty.flush()
        written = os.read(reader.fileno(), 4096).decode()
    assert "INFO  gw: to a terminal k=v" in written
    assert not written.lstrip().startswith("{")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, text or json"):
        setup_logging(fmt="xml", stream=io.StringIO())  # type: ignore[arg-type]


def test_setup_again_replaces_the_handler_and_set_level_filters() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", fmt="json", stream=first)
    setup_logging("info", fmt="json", stream=second)
    logging.getLogger("x").info("once")
    assert first.getvalue() == ""
    assert len(_lines(second)) == 1
    set_level("error")
    logging.getLogger("x").warning("filtered")
    assert len(_lines(second)) == 1


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_secrets_are_redacted_by_key_and_private_keys_by_value(
    formatter: logging.Formatter,
) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger("secrets-test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "login",
            extra={
                "password": "hunter2-hunter2",
                "link_secret": "a1b2c3d4e5f6a7b8",
                "api_key": "k-123456789",
                "pem": PEM,
                "user": "gateway",
            },
        )
        logger.warning("key material %s", PEM)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = out.getvalue()
    for secret in ("hunter2", "a1b2c3d4e5f6a7b8", "k-123456789", "MIIEvQIBADANBgkqhkiG9w0"):
        assert secret not in text
    assert text.count(REDACTED) == 5
    assert "gateway" in text


def test_startup_and_shutdown_are_one_line_each_with_the_facts() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    log_startup("gateway", __version__, "gw-7", Path("/etc/cybernetic/gateway.toml"))
    log_shutdown("gateway", "SIGTERM", exit_code=0)
    start, stop = (json.loads(line) for line in _lines(out))
    assert start["msg"] == "gateway starting"
    assert start["logger"] == "gateway"
    assert start["event"] == "startup"
    assert start["version"] == __version__
    assert start["node_id"] == "gw-7"
    assert start["config"] == "/etc/cybernetic/gateway.toml"
    assert start["pid"] == os.getpid()
    assert start["python"] == ".".join(map(str, sys.version_info[:3]))
    assert stop["msg"] == "gateway stopped"
    assert stop["event"] == "shutdown"
    assert stop["reason"] == "SIGTERM"
    assert stop["exit_code"] == 0
    assert 0 <= stop["uptime_s"] < 5


def test_startup_line_in_text_reads_as_one_sentence_of_facts() -> None:
    out = io.StringIO()
    setup_logging(fmt="text", stream=out)
    log_startup("cloud", "1.2.3", "cloud", None)
    log_shutdown("cloud", "supervisor gave up")
    start, stop = (line.split(" ", 1)[1] for line in _lines(out))
    assert start.startswith("INFO  cloud: cloud starting event=startup component=cloud ")
    assert 'version=1.2.3 node_id=cloud config="" pid=' in start
    assert stop.startswith('INFO  cloud: cloud stopped event=shutdown component=cloud reason="supe')
    assert "uptime_s=" in stop


def test_shutdown_without_a_startup_has_no_uptime() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    log_shutdown("never-started", "config error")
    record = json.loads(out.getvalue())
    assert "uptime_s" not in record
    assert record["reason"] == "config error"


def test_the_log_format_setting_defaults_to_auto_and_takes_only_known_formats() -> None:
    assert LogSettings().format == "auto"
    assert msgspec.convert({"format": "text"}, LogSettings).format == "text"
    assert msgspec.convert({"level": "debug", "format": "json"}, LogSettings).format == "json"
    with pytest.raises(msgspec.ValidationError, match="format"):
        msgspec.convert({"format": "xml"}, LogSettings)
