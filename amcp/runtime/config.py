"""Configuration: TOML files decoded into msgspec Structs, every error reported with its path.

Config Structs are declared with ``forbid_unknown_fields=True`` and ``Meta`` constraints so a
typo fails at start-up. msgspec stops at the first error; :func:`validate` walks the Struct
tree itself and collects *every* error (``$.uplink.port: Expected int, got str``) so
``cybernetic config check`` can list them all at once.

Secrets never need to live in the file: an environment variable
``CYBERNETIC__<SECTION>__<FIELD>`` (upper case, ``__`` between levels) overrides any value,
for example ``CYBERNETIC__UPLINK__PASSWORD``. Values are parsed as TOML scalars when they
parse, else taken as strings.
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)
ENV_PREFIX = "CYBERNETIC__"


class ConfigError(Exception):
    """A configuration file is unreadable or invalid; ``errors`` lists each problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(errors))
        self.source = source
        self.errors = errors


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[path[-1]] = _env_value(raw)
    return data


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct class inside ``tp`` (plain, Optional or Annotated), if there is one."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _struct_type(typing.get_args(tp)[0])
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        structs = [a for a in typing.get_args(tp) if _struct_type(a)]
        if len(structs) == 1:
            return _struct_type(structs[0])
    return None


def validate(data: Any, tp: type[msgspec.Struct], path: str = "$") -> list[str]:
    """Every error in ``data`` against the Struct ``tp``, each with its path."""
    if not isinstance(data, dict):
        return [f"{path}: expected a table, got {type(data).__name__}"]
    fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
    known = ", ".join(sorted(fields))
    errors = [f"{path}: unknown field {k!r} (known: {known})" for k in data if k not in fields]
    hints = typing.get_type_hints(tp, include_extras=True)
    for name, f in fields.items():
        here = f"{path}.{name}"
        if name not in data:
            if f.required:
                errors.append(f"{here}: required field is missing")
            continue
        inner = _struct_type(hints[f.name])
        if inner is not None and isinstance(data[name], dict):
            errors.extend(validate(data[name], inner, here))
            continue
        try:
            msgspec.convert(data[name], hints[f.name], strict=False)
        except msgspec.ValidationError as exc:
            detail = str(exc).split(" - at ", 1)
            suffix = detail[1].removeprefix("$") if len(detail) > 1 else ""
            errors.append(f"{here}{suffix}: {detail[0]}")
    if not errors:
        try:
            msgspec.convert(data, tp, strict=False)
        except (msgspec.ValidationError, ValueError, TypeError) as exc:  # __post_init__ checks
            errors.append(f"{path}: {exc}")
    return errors


def load(path: str | os.PathLike[str], tp: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Read, override from the environment, validate and decode a TOML configuration."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror}"]) from exc
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from exc
    return from_dict(data, tp, source, environ)


def from_dict(
    data: dict[str, Any],
    tp: type[T],
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
) -> T:
    data = apply_env(data, os.environ if environ is None else environ)
    errors = validate(data, tp)
    if errors:
        raise ConfigError(source, errors)
    return msgspec.convert(data, tp, strict=False)
