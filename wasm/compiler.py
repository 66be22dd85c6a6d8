"""Policy source → a wasm binary that carries its own manifest.

The binary is self-contained (the manifest is a data segment), so the one blob is what gets
signed, shipped and loaded. ``wat2wasm`` is wasmtime's own text parser: we write no encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import wasmtime

from wasm import abi, ast
from wasm.codegen import DEFAULT_BATCH_CAPACITY, DEFAULT_DEVICE_CAPACITY, generate
from wasm.errors import PolicyCompileError
from wasm.parser import parse


@dataclass(frozen=True)
class CompiledPolicy:
    """A compiled policy: the wasm binary, the WAT it came from and the parsed source."""

    wasm: bytes
    wat: str
    manifest: abi.Manifest
    policy: ast.Policy


def compile_policy(
    source: str,
    *,
    source_name: str = "<policy>",
    batch_capacity: int = DEFAULT_BATCH_CAPACITY,
    device_capacity: int = DEFAULT_DEVICE_CAPACITY,
) -> CompiledPolicy:
    """Parse, check and compile policy ``source``; raises :class:`PolicySyntaxError` on bad input.

    CPU-bound (a few ms): call it from a worker thread when on the event loop.
    """
    if not 1 <= batch_capacity <= 1 << 16:
        raise PolicyCompileError(f"batch_capacity must be 1..65536, not {batch_capacity}")
    if not 1 <= device_capacity <= 1 << 20:
        raise PolicyCompileError(f"device_capacity must be 1..1048576, not {device_capacity}")
    policy = parse(source, source_name)
    wat, manifest = generate(policy, batch_capacity, device_capacity)
    try:
        binary = bytes(wasmtime.wat2wasm(wat))
    except wasmtime.WasmtimeError as exc:  # a compiler bug, never the user's fault
        raise PolicyCompileError(f"internal error: generated WAT was refused: {exc}") from exc
    return CompiledPolicy(binary, wat, manifest, policy)


def compile_policy_file(path: str | Path, **options: int) -> CompiledPolicy:
    """Compile the policy in the UTF-8 text file at ``path`` (errors name the file)."""
    p = Path(path)
    return compile_policy(p.read_text(encoding="utf-8"), source_name=str(p), **options)
