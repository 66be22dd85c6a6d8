"""Configuration errors name every bad field; the environment overrides secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import pytest

from amcp.runtime.config import ConfigError, load


class Link(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1883
    password: str = ""


class Conf(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    link: Link = msgspec.field(default_factory=Link)
    batch: Annotated[int, msgspec.Meta(gt=0)] = 100


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_valid_file_decodes(tmp_path: Path) -> None:
    conf = load(_write(tmp_path, 'name = "gw"\n[link]\nport = 8883\n'), Conf, environ={})
    assert conf == Conf(name="gw", link=Link(port=8883))


def test_every_error_is_reported_with_its_path(tmp_path: Path) -> None:
    text = 'batch = 0\ntypo = 1\n[link]\nport = "x"\nhots = "a"\n'
    with pytest.raises(ConfigError) as err:
        load(_write(tmp_path, text), Conf, environ={})
    errors = "\n".join(err.value.errors)
    assert "$.name: required field is missing" in errors
    assert "$: unknown field 'typo'" in errors
    assert "$.batch: Expected `int` >= 1" in errors
    assert "$.link: unknown field 'hots'" in errors
    assert "$.link.port: Expected `int`, got `str`" in errors
    assert len(err.value.errors) == 5


def test_out_of_range_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$\.link\.port: Expected `int` <= 65535"):
        load(_write(tmp_path, 'name = "gw"\n[link]\nport = 70000\n'), Conf, environ={})


def test_environment_overrides_secrets(tmp_path: Path) -> None:
    conf = load(
        _write(tmp_path, 'name = "gw"\n'),
        Conf,
        environ={"CYBERNETIC__LINK__PASSWORD": "s3cret", "CYBERNETIC__LINK__PORT": "1884"},
    )
    assert conf.link.password == "s3cret"
    assert conf.link.port == 1884


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml", Conf, environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(_write(tmp_path, "name = \n"), Conf, environ={})
