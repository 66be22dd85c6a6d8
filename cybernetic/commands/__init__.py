"""Command groups of the `cybernetic` CLI: one module each, discovered at start-up.

A module exposes ``register(sub: argparse._SubParsersAction) -> None`` and sets
``handler=`` on each parser it adds (a callable taking the parsed namespace and
returning the exit code).
"""
