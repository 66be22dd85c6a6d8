"""`cybernetic patterns add|list|remove|test`: a gateway's GoldRush rules, edited and tried.

``add``/``list``/``remove`` work on a CRDT store file: the gateway's (``-c gateway.toml``:
``state_dir/store.sqlite3``) or any (``--store PATH``). The store has one writer process, so
edit a gateway's store while the gateway is stopped (a running gateway takes rules from the
cloud through sync, or from its patterns files, re-read when they change); the command
refuses a store that looks open elsewhere unless ``--force``.

``test`` replays recorded readings (JSON lines of readings, or the cloud's readings.sqlite3)
through rules, with the readings' own timestamps as the clock, and prints what would have
fired. Exit codes: 0 done, 1 not found, 2 bad input (a rule that does not compile).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from amcp.goldrush.semantics import event_from_reading
from amcp.runtime.config import ConfigError, load
from amcp.store import LWWStore, recorded_site
from amcp.wire.telemetry import Reading
from cloud.readings import recorded_readings as cloud_readings
from gateway.config import GatewayConfig
from gateway.rules import (
    STORE_FILE,
    STORE_NAMESPACE,
    ActionSpec,
    PatternRule,
    Rule,
    RuleFile,
    RuleFileError,
    SituationRule,
    Sourced,
    WindowRule,
    build_rules,
    decode_rule,
    encode_rule,
    load_rule_file,
)
from gateway.rules.actions import event_record
from gateway.rules.model import AlgedonicAction, EventAction


class PatternsCliError(Exception):
    """Bad input to the command; printed, exit code 2."""


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "patterns", help="add, list, remove and test GoldRush rules (docs/rules.md)"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def store_args(p: argparse.ArgumentParser) -> None:
        where = p.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", type=Path, help="gateway config (its store)")
        where.add_argument("--store", type=Path, help="a CRDT store file")
        p.add_argument("--site", default="", help="site of a new store file (default local)")
        p.add_argument("--namespace", default=STORE_NAMESPACE)
        p.add_argument("--force", action="store_true", help="write a store that looks open")

    add = verbs.add_parser("add", help="add or replace a rule (checked before it is written)")
    store_args(add)
    add.add_argument("id", nargs="?", help="rule id (not with --file)")
    rule_args(add)
    add.set_defaults(handler=_handle(_add))

    lst = verbs.add_parser("list", help="list the rules in a store")
    store_args(lst)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=_handle(_list))

    rm = verbs.add_parser("remove", help="remove rules from a store")
    store_args(rm)
    rm.add_argument("ids", nargs="+")
    rm.set_defaults(handler=_handle(_remove))

    test = verbs.add_parser("test", help="replay recorded readings and print what fires")
    test.add_argument("--readings", type=Path, required=True, help=".jsonl or readings.sqlite3")
    test.add_argument("--store", type=Path, help="also take the rules of this store")
    rule_args(test)
    test.add_argument("--limit", type=int, default=50, help="firings to print (0: all)")
    test.add_argument("--json", action="store_true", help="one JSON object per firing")
    test.set_defaults(handler=_handle(_test))


def rule_args(p: argparse.ArgumentParser) -> None:
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--when", help="a pattern, e.g. 'humidity > 55 => alert'")
    kind.add_argument("--window", metavar="PATTERN", help="count matches of this pattern id")
    kind.add_argument("--situation", metavar="WHEN", help="a pattern over fired.<id> facts")
    kind.add_argument("--file", type=Path, help="every rule of a patterns file (TOML/JSON)")
    p.add_argument("--count", type=int, default=3, help="window: matches needed")
    p.add_argument("--within", type=float, default=60.0, help="window/situation horizon, s")
    p.add_argument("--tumbling", action="store_true", help="window: fixed slots")
    p.add_argument("--action", action="append", default=[], help="action name (repeatable)")
    p.add_argument("--cooldown", type=float, default=0.0, help="rest actions per key, s")
    p.add_argument("--description", default="")


def _rules_from_args(args: argparse.Namespace, rid: str | None) -> RuleFile:
    if args.file is not None:
        try:
            return load_rule_file(args.file)
        except RuleFileError as exc:
            raise PatternsCliError(str(exc)) from exc
    given = {"actions": args.action, "cooldown_s": args.cooldown, "description": args.description}
    common: dict[str, Any] = {k: v for k, v in given.items() if v}  # stored form omits defaults
    rid = rid or "cli"
    if args.when is not None:
        return RuleFile(patterns={rid: PatternRule(when=args.when, **common)})
    if args.window is not None:
        window = WindowRule(
            pattern=args.window,
            count=args.count,
            within_s=args.within,
            kind="tumbling" if args.tumbling else "sliding",
            **common,
        )
        return RuleFile(windows={rid: window})
    if args.situation is not None:
        return RuleFile(
            situations={rid: SituationRule(when=args.situation, within_s=args.within, **common)}
        )
    return RuleFile()


# -- the store ----------------------------------------------------------------------------
def _store_path(args: argparse.Namespace) -> tuple[Path, str]:
    if args.store is not None:
        return args.store, args.site
    if args.config is None:
        raise PatternsCliError("give -c GATEWAY_CONFIG or --store PATH")
    try:
        config = load(args.config, GatewayConfig)
    except ConfigError as exc:
        raise PatternsCliError(str(exc)) from exc
    return Path(config.gateway.state_dir) / STORE_FILE, config.gateway.id


@contextlib.contextmanager
def _open_store(args: argparse.Namespace, *, write: bool) -> Iterator[LWWStore]:
    path, site = _store_path(args)
    if write and Path(f"{path}-wal").exists() and not args.force:
        raise PatternsCliError(
            f"{path} looks open in another process (its -wal file exists): stop the gateway "
            "first, or pass --force if it is not running"
        )
    if not write and not path.exists():
        raise FileNotFoundError(path)
    site = recorded_site(path) or site or "local"
    path.parent.mkdir(parents=True, exist_ok=True)
    store = LWWStore(path, site)
    try:
        yield store
    finally:
        store.close()


def _stored(store: LWWStore, namespace: str) -> dict[str, Rule]:
    out: dict[str, Rule] = {}
    for key, value in store.items(namespace).items():
        try:
            out[key] = decode_rule(value)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            print(f"warning: stored rule {key!r} does not decode: {exc}", file=sys.stderr)
    return out


def _check(rules: dict[str, Rule], named: dict[str, ActionSpec]) -> None:
    docs = {rid: Sourced(rule, "cli") for rid, rule in rules.items()}
    result = build_rules(docs, named, {}, clock=lambda: 0.0)
    if result.refused:
        lines = [f"rule {r.rule_id!r} refused: {r.error}" for r in result.refused]
        raise PatternsCliError("\n".join(lines))


def _add(args: argparse.Namespace) -> int:
    if args.file is None and args.id is None:
        raise PatternsCliError("give a rule id, or --file")
    new = _rules_from_args(args, args.id)
    try:
        rules = new.rules()
    except RuleFileError as exc:
        raise PatternsCliError(str(exc)) from exc
    if not rules:
        raise PatternsCliError("nothing to add: give --when, --window, --situation or --file")
    if new.actions:
        # named actions live in the gateway's config; a store rule carries its actions inline
        rules = {rid: _inline(rule, new.actions) for rid, rule in rules.items()}
    with _open_store(args, write=True) as store:
        _check(_stored(store, args.namespace) | rules, {})
        store.write((args.namespace, rid, encode_rule(rule)) for rid, rule in rules.items())
    for rid, rule in rules.items():
        print(f"added {rule.__struct_config__.tag} {rid}")
    return 0


def _inline(rule: Rule, named: dict[str, ActionSpec]) -> Rule:
    actions = [named.get(a, a) if isinstance(a, str) else a for a in rule.actions]
    return msgspec.structs.replace(rule, actions=actions)


def _summary(rule: Rule) -> str:
    match rule:
        case PatternRule():
            text = rule.when if isinstance(rule.when, str) else "<ast>"
        case WindowRule():
            text = f"{rule.pattern} x{rule.count} within {rule.within_s:g}s ({rule.kind})"
        case SituationRule():
            text = f"{rule.when} (within {rule.within_s:g}s)"
    actions = [a if isinstance(a, str) else a.__struct_config__.tag for a in rule.actions]
    off = "" if rule.enabled else " [disabled]"
    return f"{text}{' -> ' + ', '.join(map(str, actions)) if actions else ''}{off}"


def _list(args: argparse.Namespace) -> int:
    with _open_store(args, write=False) as store:
        rules = _stored(store, args.namespace)
    if args.json:
        print(json.dumps({rid: msgspec.to_builtins(rule) for rid, rule in sorted(rules.items())}))
        return 0
    for rid, rule in sorted(rules.items()):
        print(f"{rid:<24} {rule.__struct_config__.tag:<9} {_summary(rule)}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    with _open_store(args, write=True) as store:
        present = store.items(args.namespace)
        missing = [rid for rid in args.ids if rid not in present]
        store.write((args.namespace, rid, None) for rid in args.ids if rid in present)
    for rid in args.ids:
        print(f"{'not found' if rid in missing else 'removed'} {rid}")
    return 1 if missing else 0


# -- replay -------------------------------------------------------------------------------
def recorded_readings(path: Path) -> Iterator[Reading]:
    """Readings from JSON lines or from the cloud's readings table, oldest first."""
    if path.suffix in {".sqlite3", ".db", ".sqlite"}:
        if not path.exists():
            raise FileNotFoundError(2, "no such file", str(path))
        yield from cloud_readings(path)
        return
    decoder = msgspec.json.Decoder(Reading)
    with path.open("rb") as lines:
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield decoder.decode(line)
                except msgspec.DecodeError as exc:
                    raise PatternsCliError(f"{path}:{n}: not a reading: {exc}") from exc


def _test(args: argparse.Namespace) -> int:
    given = _rules_from_args(args, args.window or "test")
    rules: dict[str, Rule] = {}
    if args.store is not None:
        store = LWWStore(args.store, recorded_site(args.store) or "local")
        try:
            rules |= _stored(store, STORE_NAMESPACE)
        finally:
            store.close()
    try:
        rules |= given.rules()
    except RuleFileError as exc:
        raise PatternsCliError(str(exc)) from exc
    if not rules:
        raise PatternsCliError("no rules: give --when, --window, --situation, --file or --store")
    now = [0.0]
    docs = {rid: Sourced(rule, "cli") for rid, rule in rules.items()}
    result = build_rules(docs, given.actions, {}, clock=lambda: now[0])
    for r in result.refused:
        print(f"rule {r.rule_id!r} refused: {r.error}", file=sys.stderr)
    if result.refused:
        return 2
    engine, entries = result.rules.engine, result.rules.entries
    fired: Counter[str] = Counter()
    seen = printed = 0
    for reading in recorded_readings(args.readings):
        seen += 1
        now[0] = reading.ts_ms / 1000
        event = event_from_reading(reading)
        for rid in engine.process(event):
            fired[rid] += 1
            if args.limit and printed >= args.limit:
                continue
            printed += 1
            entry = entries[rid]
            if args.json:
                records = [
                    msgspec.to_builtins(event_record(rid, entry, a, event, "test"))
                    for a in entry.actions
                    if isinstance(a, EventAction | AlgedonicAction)
                ]
                print(
                    json.dumps(
                        {
                            "rule": rid,
                            "kind": entry.kind,
                            "device": reading.device,
                            "seq": reading.seq,
                            "ts_ms": reading.ts_ms,
                            "events": records,
                        }
                    )
                )
            else:
                acts = ", ".join(str(a.__struct_config__.tag) for a in entry.actions)
                print(
                    f"{reading.ts_ms} {reading.device} seq {reading.seq}: {entry.kind} {rid}"
                    f"{' -> ' + acts if acts else ''}"
                )
    total = ", ".join(f"{rid} {n}" for rid, n in sorted(fired.items())) or "nothing fired"
    print(f"{seen} readings: {total}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _handle(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = fn(args)
        except PatternsCliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except FileNotFoundError as exc:
            print(f"error: not found: {exc.filename or exc}", file=sys.stderr)
            return 1
        return code

    return run
