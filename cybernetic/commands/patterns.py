"""`cybernetic patterns add|list|remove|test`: a gateway's GoldRush rules, edited and tried.

``add``/``list``/``remove`` work on a CRDT store file: the gateway's (``-c gateway.toml``:
``state_dir/store.sqlite3``) or any (``--store PATH``). With ``-c`` and the gateway running,
``add`` and ``remove`` go through its control socket (gateway.control): the command checks
the new rule set against the rules it reads, and the gateway writes the change in its own
store and applies it at once (refused, with nothing written, if its rules changed meanwhile).
A store no gateway serves is written directly; the command refuses one that looks open in
another process unless ``--force``. A file that is not a CRDT
store is refused and never written; ``list`` only reads (read-only). ``remove`` refuses to
remove a rule that a window or a situation left in the store depends on (it names them).

``test`` replays recorded readings (JSON lines of readings, or the cloud's readings.sqlite3)
through rules, with the readings' own timestamps as the clock, and prints what would have
fired, with ISO 8601 UTC times. Exit codes (docs/cli.md): 0 done, 1 some ids to remove were
not found, 2 refused (bad input: a missing or wrong file, a rule that does not compile, a
rule others depend on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from amcp.goldrush.semantics import event_from_reading
from amcp.store import LWWStore, StoreError, recorded_site
from amcp.store import reads as store_reads
from amcp.store import schema as store_schema
from amcp.wire.telemetry import Reading
from cloud.readings import recorded_readings as cloud_readings
from cybernetic.cli import (
    FAILED,
    UNREACHABLE,
    CliError,
    describe_os_error,
    group_option,
    iso_ms,
    one_line,
)
from cybernetic.cli import require_config as load_config
from gateway.config import GatewayConfig
from gateway.control import SOCKET_NAME, RulesWrite, encode_rows, rules_digest
from gateway.control import send as send_control
from gateway.rules import (
    STORE_FILE,
    STORE_NAMESPACE,
    ActionSpec,
    BuildRefusedError,
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


class PatternsCliError(CliError):
    """Bad input to the command; printed, exit code 2."""


SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SUFFIXES = frozenset({".sqlite3", ".db", ".sqlite"})
_FIRED = re.compile(r"fired\.(?:`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*))")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "patterns", help="add, list, remove and test GoldRush rules (docs/rules.md)"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    add = verbs.add_parser("add", help="add or replace a rule (checked before it is written)")
    add.add_argument("id", nargs="?", help="rule id (not with --file)")
    rule_args(add)
    add.set_defaults(handler=_handle(_add))

    lst = verbs.add_parser("list", help="list the rules in a store (read-only)")
    lst.add_argument("--json", action="store_true", help="one JSON object: id -> rule")
    lst.set_defaults(handler=_handle(_list))

    rm = verbs.add_parser("remove", help="remove rules from a store")
    rm.add_argument("ids", nargs="+", metavar="ID", help="rule ids")
    rm.set_defaults(handler=_handle(_remove))

    test = verbs.add_parser("test", help="replay recorded readings and print what fires")
    test.add_argument(
        "--readings",
        type=Path,
        required=True,
        metavar="FILE",
        help="readings as .jsonl, or the cloud's readings.sqlite3",
    )
    rule_args(test)
    test.add_argument("--limit", type=_count, default=50, help="firings to print (0: all)")
    test.add_argument("--json", action="store_true", help="one JSON object per firing")
    test.set_defaults(handler=_handle(_test))

    stores = [add, lst, rm]
    group_option(
        parser,
        stores,
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="gateway.toml: use that gateway's store (state_dir/store.sqlite3)",
    )
    group_option(
        parser,
        [*stores, test],
        "--store",
        type=Path,
        metavar="FILE",
        help="a CRDT store file (test: also take the rules of this store)",
    )
    group_option(
        parser, [add, rm], "--site", default="", help="site of a new store file (default local)"
    )
    group_option(
        parser,
        [*stores, test],
        "--namespace",
        default=STORE_NAMESPACE,
        help=f"the store's namespace of rules (default {STORE_NAMESPACE})",
    )
    group_option(
        parser, [add, rm], "--force", action="store_true", help="write a store that looks open"
    )


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {text!r}")
    return int(text)


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds >= 0: {text!r}")
    return value


def _horizon(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def rule_args(p: argparse.ArgumentParser) -> None:
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--when", help="a pattern, e.g. 'humidity > 55 => alert'")
    kind.add_argument("--window", metavar="PATTERN", help="count matches of this pattern id")
    kind.add_argument("--situation", metavar="WHEN", help="a pattern over fired.<id> facts")
    kind.add_argument(
        "--file", type=Path, metavar="FILE", help="every rule of a patterns file (TOML/JSON)"
    )
    p.add_argument("--count", type=_at_least_one, default=3, help="window: matches needed")
    p.add_argument(
        "--within", type=_horizon, default=60.0, help="window/situation horizon, s (default 60)"
    )
    p.add_argument("--tumbling", action="store_true", help="window: fixed slots")
    p.add_argument("--action", action="append", default=[], help="action name (repeatable)")
    p.add_argument("--cooldown", type=_seconds, default=0.0, help="rest actions per key, s")
    p.add_argument("--description", default="", help="a line saying what the rule is for")


def _rules_from_args(args: argparse.Namespace, rid: str | None) -> RuleFile:
    if args.file is not None:
        if args.file.is_dir():
            raise PatternsCliError(f"--file {args.file} is a directory: give a patterns file")
        try:
            return load_rule_file(args.file)
        except RuleFileError as exc:
            raise PatternsCliError(one_line(str(exc))) from exc
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
    config = getattr(args, "config", None)
    if args.store is not None and config is not None:
        raise PatternsCliError("give -c GATEWAY_CONFIG or --store PATH, not both")
    if args.store is not None:
        return args.store, getattr(args, "site", "")
    if config is None:
        raise PatternsCliError("give -c GATEWAY_CONFIG or --store PATH")
    gateway = load_config(config, GatewayConfig)
    return Path(gateway.gateway.state_dir) / STORE_FILE, gateway.gateway.id


def _store_site(path: Path) -> str | None:
    """The site of an existing CRDT store file, None for a new (absent or empty) file; refuses
    anything else without writing to it."""
    if path.is_dir():
        raise PatternsCliError(f"{path} is a directory: give a CRDT store file")
    if not path.exists() or path.stat().st_size == 0:
        return None
    site: str | None = None
    if _is_sqlite(path):
        try:
            site = recorded_site(path)
        except sqlite3.Error as exc:
            raise PatternsCliError(f"cannot open {path}: {exc}") from exc
        except OSError as exc:
            raise PatternsCliError(describe_os_error(exc)) from exc
    if site is None:
        what = "another database" if _is_sqlite(path) else "not an SQLite file"
        raise PatternsCliError(
            f"{path} is not a CRDT store ({what}): nothing read or written; give a "
            f"gateway's state_dir/{STORE_FILE} (or -c gateway.toml)"
        )
    return site


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


@contextlib.contextmanager
def _open_store(args: argparse.Namespace, *, write: bool) -> Iterator[LWWStore]:
    """The store for writing (``add``, ``remove``): only a CRDT store file or a new file."""
    path, site = _store_path(args)
    if write and Path(f"{path}-wal").exists() and not args.force:
        raise PatternsCliError(
            f"{path} looks open in another process (its -wal file exists): stop the gateway "
            "first, or pass --force if it is not running"
        )
    if not write and not path.exists():
        raise FileNotFoundError(path)
    site = _store_site(path) or site or "local"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        store = LWWStore(path, site)
    except (StoreError, sqlite3.Error) as exc:
        raise PatternsCliError(f"cannot open the store {path}: {one_line(str(exc))}") from exc
    try:
        yield store
    finally:
        store.close()


def _read_rules(path: Path, namespace: str) -> dict[str, Rule]:
    """The rules of a store file, read through a read-only connection (nothing written)."""
    return _decoded(_read_items(path, namespace))


def _read_items(path: Path, namespace: str) -> dict[str, bytes]:
    if not path.exists():
        raise FileNotFoundError(path)
    if _store_site(path) is None:  # an empty file: no rules
        return {}
    try:
        with contextlib.closing(store_schema.connect(path, readonly=True)) as conn:
            return store_reads.items(conn, namespace)
    except (sqlite3.Error, StoreError) as exc:
        raise PatternsCliError(f"cannot read the store {path}: {one_line(str(exc))}") from exc


def _live_gateway(args: argparse.Namespace) -> tuple[Path, Path, str] | None:
    """(control socket, store, rules namespace) of a running gateway named by ``-c``."""
    config = getattr(args, "config", None)
    if config is None:
        return None
    gateway = load_config(config, GatewayConfig)
    state = Path(gateway.gateway.state_dir)
    socket_path = state / SOCKET_NAME
    if not socket_path.exists():
        return None
    if args.namespace != gateway.rules.namespace:
        raise PatternsCliError(
            f"the running gateway takes rules from namespace {gateway.rules.namespace!r}, "
            f"not {args.namespace!r}: drop --namespace, or stop the gateway first"
        )
    return socket_path, state / STORE_FILE, gateway.rules.namespace


def _write_live(socket_path: Path, rows: dict[str, bytes | None], read: dict[str, bytes]) -> bool:
    """Send ``rows`` to the running gateway; False when none answers (a stale socket)."""
    try:
        answer = send_control(
            socket_path, RulesWrite(rows=encode_rows(rows), expect=rules_digest(read))
        )
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        raise PatternsCliError(
            f"the gateway's control socket {socket_path} did not answer: {describe_os_error(exc)}",
            UNREACHABLE,
        ) from exc
    if not answer.ok:
        raise PatternsCliError(f"the gateway refused the change ({answer.error}): {answer.detail}")
    return True


def _stored(store: LWWStore, namespace: str) -> dict[str, Rule]:
    return _decoded(store.items(namespace))


def _decoded(values: dict[str, bytes]) -> dict[str, Rule]:
    out: dict[str, Rule] = {}
    for key, value in values.items():
        try:
            out[key] = decode_rule(value)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            print(f"warning: stored rule {key!r} does not decode: {exc}", file=sys.stderr)
    return out


def _refusals(rules: dict[str, Rule], named: dict[str, ActionSpec]) -> dict[str, str]:
    docs = {rid: Sourced(rule, "cli") for rid, rule in rules.items()}
    try:
        result = build_rules(docs, named, {}, clock=lambda: 0.0)
    except BuildRefusedError as exc:
        raise PatternsCliError(f"the rule set cannot be built: {one_line(str(exc))}") from exc
    return {r.rule_id: one_line(str(r.error)) for r in result.refused}


def _check(rules: dict[str, Rule], named: dict[str, ActionSpec]) -> None:
    refused = _refusals(rules, named)
    if refused:
        text = "; ".join(f"rule {rid!r} refused: {err}" for rid, err in refused.items())
        raise PatternsCliError(f"{text} (nothing written)")


def _add(args: argparse.Namespace) -> int:
    if args.file is None and args.id is None:
        raise PatternsCliError("give a rule id, or --file")
    new = _rules_from_args(args, args.id)
    try:
        rules = new.rules()
    except RuleFileError as exc:
        raise PatternsCliError(one_line(str(exc))) from exc
    if not rules:
        raise PatternsCliError("nothing to add: give --when, --window, --situation or --file")
    if new.actions:
        # named actions live in the gateway's config; a store rule carries its actions inline
        rules = {rid: _inline(rule, new.actions) for rid, rule in rules.items()}
    live = _live_gateway(args)
    if live is not None:
        socket_path, path, namespace = live
        read = _read_items(path, namespace)
        _check(_decoded(read) | rules, {})
        if _write_live(socket_path, {rid: encode_rule(r) for rid, r in rules.items()}, read):
            for rid, rule in rules.items():
                print(f"added {rule.__struct_config__.tag} {rid} (the running gateway applied it)")
            return 0
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
    path, _ = _store_path(args)
    with _tidy([path]):
        rules = _read_rules(path, args.namespace)
    if args.json:
        print(json.dumps({rid: msgspec.to_builtins(rule) for rid, rule in sorted(rules.items())}))
        return 0
    for rid, rule in sorted(rules.items()):
        print(f"{rid:<24} {rule.__struct_config__.tag:<9} {_summary(rule)}")
    if not rules:
        print(f"no rules in {path} (namespace {args.namespace!r})", file=sys.stderr)
    return 0


def dependents(rules: dict[str, Rule], removed: set[str]) -> dict[str, list[str]]:
    """Which rules that stay use a removed one: windows count a pattern's matches, situations
    read ``fired.<id>`` facts. ``{removed id: [dependent ids]}``."""
    out: dict[str, list[str]] = {}
    for rid, rule in sorted(rules.items()):
        if rid in removed:
            continue
        uses: set[str] = set()
        if isinstance(rule, WindowRule):
            uses.add(rule.pattern)
        elif isinstance(rule, SituationRule):
            uses |= {a or b for a, b in _FIRED.findall(rule.when)}
        for used in sorted(uses & removed):
            out.setdefault(used, []).append(rid)
    return out


def _remove(args: argparse.Namespace) -> int:
    path, _ = _store_path(args)
    if not path.exists():
        raise PatternsCliError(f"no store at {path}: nothing to remove (check --store or -c)")
    live = _live_gateway(args)
    done = False
    if live is not None:
        socket_path, path, namespace = live
        read = _read_items(path, namespace)
        removed, missing = _removal(read, args.ids)
        done = not removed or _write_live(socket_path, dict.fromkeys(removed), read)
    if not done:
        with _open_store(args, write=True) as store:
            removed, missing = _removal(store.items(args.namespace), args.ids)
            store.write((args.namespace, rid, None) for rid in args.ids if rid in removed)
    for rid in args.ids:
        print(f"{'not found' if rid in missing else 'removed'} {rid}")
    if missing:
        print(
            f"error: not in the store: {', '.join(missing)} (see: cybernetic patterns list)",
            file=sys.stderr,
        )
    return FAILED if missing else 0


def _removal(present: dict[str, bytes], ids: list[str]) -> tuple[set[str], list[str]]:
    """(ids to remove, ids not there), refusing a removal others depend on or that would
    leave a rule set that does not build."""
    missing = [rid for rid in ids if rid not in present]
    removed = {rid for rid in ids if rid in present}
    stored = _decoded(present)
    needed = dependents(stored, removed)
    if needed:
        uses = "; ".join(
            f"{', '.join(map(repr, users))} {'uses' if len(users) == 1 else 'use'} {rid!r}"
            for rid, users in sorted(needed.items())
        )
        raise PatternsCliError(
            f"not removed: {uses}; remove those too (in the same command) or change them first"
        )
    before = _refusals(stored, {})
    after = _refusals({k: v for k, v in stored.items() if k not in removed}, {})
    broken = {rid: err for rid, err in after.items() if rid not in before}
    if broken:
        text = "; ".join(f"{rid!r}: {err}" for rid, err in broken.items())
        raise PatternsCliError(f"not removed: the rules left would be refused ({text})")
    return removed, missing


# -- replay -------------------------------------------------------------------------------
def recorded_readings(path: Path) -> Iterator[Reading]:
    """Readings from JSON lines or from the cloud's readings table, oldest first."""
    if not path.exists():
        raise FileNotFoundError(2, "no such file", str(path))
    if path.is_dir():
        raise PatternsCliError(f"--readings {path} is a directory: give a .jsonl or .sqlite3 file")
    if _is_sqlite(path):
        yield from _database_readings(path)
        return
    if path.suffix in SQLITE_SUFFIXES and path.stat().st_size > 0:
        raise PatternsCliError(
            f"{path} is not a database (no SQLite header): give the cloud's readings.sqlite3 "
            "or readings as JSON lines (.jsonl)"
        )
    decoder = msgspec.json.Decoder(Reading)
    with path.open("rb") as lines:
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield decoder.decode(line)
                except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                    raise PatternsCliError(
                        f"{path}:{n}: not a reading: {exc} (give JSON lines of readings, "
                        "or the cloud's readings.sqlite3)"
                    ) from exc


def _tables(path: Path) -> list[str]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error as exc:
        raise PatternsCliError(f"{path}: cannot read the database: {exc}") from exc
    return sorted(str(r[0]) for r in rows)


def _database_readings(path: Path) -> Iterator[Reading]:
    """The cloud's readings table, read-only; any other database is refused by name."""
    tables = _tables(path)
    if "readings" not in tables:
        found = ", ".join(tables[:6]) or "none"
        if "outbox" in tables:
            found += "; a gateway's outbox, which keeps readings only until the cloud has them"
        raise PatternsCliError(
            f"{path} is not the cloud's reading store (no readings table; its tables: {found}): "
            "give the cloud's state_dir/readings.sqlite3 or readings as JSON lines"
        )
    try:
        yield from cloud_readings(path)
    except (sqlite3.Error, ValueError, TypeError) as exc:
        raise PatternsCliError(
            f"{path}: its readings table is not the cloud's ({one_line(str(exc))}): give the "
            "cloud's state_dir/readings.sqlite3 or readings as JSON lines"
        ) from exc


def _test(args: argparse.Namespace) -> int:
    given = _rules_from_args(args, args.window or "test")
    rules: dict[str, Rule] = {}
    if args.store is not None:
        rules |= _read_rules(args.store, args.namespace)
    try:
        rules |= given.rules()
    except RuleFileError as exc:
        raise PatternsCliError(one_line(str(exc))) from exc
    if not rules:
        raise PatternsCliError("no rules: give --when, --window, --situation, --file or --store")
    if not args.readings.exists():
        raise FileNotFoundError(2, "no such file", str(args.readings))
    now = [0.0]
    docs = {rid: Sourced(rule, "cli") for rid, rule in rules.items()}
    try:
        result = build_rules(docs, given.actions, {}, clock=lambda: now[0])
    except BuildRefusedError as exc:
        raise PatternsCliError(f"the rule set cannot be built: {one_line(str(exc))}") from exc
    if result.refused:
        text = "; ".join(
            f"rule {r.rule_id!r} refused: {one_line(str(r.error))}" for r in result.refused
        )
        raise PatternsCliError(text)
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
                            "time": iso_ms(reading.ts_ms),
                            "ts_ms": reading.ts_ms,
                            "events": records,
                        }
                    )
                )
            else:
                acts = ", ".join(str(a.__struct_config__.tag) for a in entry.actions)
                print(
                    f"{iso_ms(reading.ts_ms)} {reading.device} seq {reading.seq}: "
                    f"{entry.kind} {rid}{' -> ' + acts if acts else ''}"
                )
    total = ", ".join(f"{rid} {n}" for rid, n in sorted(fired.items())) or "nothing fired"
    print(f"{seen} readings: {total}", file=sys.stderr if args.json else sys.stdout)
    return 0


@contextlib.contextmanager
def _tidy(paths: list[Path | None]) -> Iterator[None]:
    """Leave no ``-wal``/``-shm`` files behind that only this command's read-only connections
    made: SQLite removes them when the last connection closes, which a read-only one cannot
    do, and a ``-wal`` file makes the next ``add`` take the store for one a gateway has open.
    A connection that may write closes after them (when another process holds the file it
    is not the last, and SQLite leaves them); it writes nothing to the database."""
    files = [p for p in paths if p is not None and p.is_file()]
    fresh = [p for p in files if not Path(f"{p}-wal").exists() and not Path(f"{p}-shm").exists()]
    try:
        yield
    finally:
        for path in fresh:
            if Path(f"{path}-wal").exists() and _is_sqlite(path):
                with (
                    contextlib.suppress(sqlite3.Error),
                    contextlib.closing(sqlite3.connect(path)) as conn,
                ):
                    conn.execute("PRAGMA schema_version").fetchone()


def _handle(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            with _tidy([getattr(args, "store", None), getattr(args, "readings", None)]):
                return fn(args)
        except FileNotFoundError as exc:
            name = exc.filename or exc
            raise PatternsCliError(f"not found: {name} (check the path)") from exc
        except IsADirectoryError as exc:
            raise PatternsCliError(f"{exc.filename} is a directory: give a file") from exc
        except OSError as exc:
            raise PatternsCliError(describe_os_error(exc)) from exc

    return run
