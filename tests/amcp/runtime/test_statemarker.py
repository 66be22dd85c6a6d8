"""The state marker the package's preinst reads to refuse unsafe downgrades."""

from __future__ import annotations

from pathlib import Path

from amcp.runtime.statemarker import MIN_READER, STATE_SCHEMA, read_marker, write_marker


def test_marker_is_written_and_read_back(tmp_path: Path) -> None:
    assert read_marker(tmp_path) is None
    write_marker(tmp_path)
    assert read_marker(tmp_path) == (STATE_SCHEMA, MIN_READER)
    assert (tmp_path / "SCHEMA_VERSION").read_text() == (
        f"schema={STATE_SCHEMA}\nmin_reader={MIN_READER}\n"
    )


def test_a_newer_marker_is_never_lowered(tmp_path: Path) -> None:
    (tmp_path / "SCHEMA_VERSION").write_text(f"schema={STATE_SCHEMA + 5}\nmin_reader=99\n")
    write_marker(tmp_path)
    assert read_marker(tmp_path) == (STATE_SCHEMA + 5, 99)


def test_garbage_marker_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "SCHEMA_VERSION").write_text("hello\n")
    assert read_marker(tmp_path) is None
