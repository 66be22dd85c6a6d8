"""The ``[sync]`` section: defaults, rules from TOML, typos refused with their path."""

from __future__ import annotations

import tomllib

import msgspec
import pytest

from amcp.runtime.config import validate
from amcp.sync import DEFAULT_RULES, Authority, Owner, SyncSettings


class _File(msgspec.Struct, forbid_unknown_fields=True):
    sync: SyncSettings


def test_sync_settings_defaults_keep_the_default_rules() -> None:
    settings = SyncSettings()
    assert settings.batch_bytes == 96 * 1024
    assert tuple(settings.rules) == DEFAULT_RULES


def test_sync_settings_rules_from_toml_replace_the_defaults() -> None:
    data = tomllib.loads(
        """
        [sync]
        window = 8
        default_owner = "cloud"
        [[sync.rules]]
        namespace = "telemetry.*"
        owner = "gateway"
        fanout = false
        """
    )
    settings = msgspec.convert(data, _File).sync
    assert settings.window == 8
    auth = Authority(settings.rules, default_owner=settings.default_owner)
    assert auth.rule("telemetry.x").owner is Owner.GATEWAY
    assert auth.rule("policies").owner is Owner.CLOUD


@pytest.mark.parametrize(
    ("toml", "path"),
    [
        ("[sync]\nbatch_byte = 1", "$.sync"),
        ("[sync]\nbatch_bytes = 10", "$.sync.batch_bytes"),
        ("[[sync.rules]]\nnamespace = 'x'\nowner = 'nobody'", "[0].owner"),
    ],
)
def test_sync_settings_errors_name_the_field(toml: str, path: str) -> None:
    errors = validate(tomllib.loads(toml), _File)
    assert errors
    assert any(path in e for e in errors), errors
