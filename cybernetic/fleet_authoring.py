"""The authoring verbs of `cybernetic fleet`: limits, desired twins, patterns and zones,
written in the running cloud's store (through its control socket, ``cloud.control``) and
synced down.

::

    cybernetic fleet limit set TARGET SCOPE/NAME --rate R [--burst B] [--wait S]
    cybernetic fleet limit remove TARGET SCOPE/NAME [--wait S]
    cybernetic fleet limit list [TARGET]
    cybernetic fleet desired set TARGET DEVICE FIELD VALUE [--wait S]
    cybernetic fleet desired remove TARGET DEVICE FIELD [--wait S]
    cybernetic fleet pattern set TARGET ID (--when EXPR | --window P | --situation W) [--wait S]
    cybernetic fleet pattern set TARGET [ID] --file F [--wait S]
    cybernetic fleet pattern remove TARGET ID [--wait S]
    cybernetic fleet pattern list [TARGET]
    cybernetic fleet zone set GATEWAY ZONE [--wait S]
    cybernetic fleet zone remove GATEWAY [--wait S]
    cybernetic fleet applied NAMESPACE KEY [--target TARGET] [--wait S]
    cybernetic fleet marks

``TARGET`` is ``all``, ``zone/<zone>`` or ``gw/<gateway>`` (docs/s2.md, "Limits from the
cloud"). Every value is checked here first, with the same rules as the cloud's
(:mod:`amcp.fleet`): a bad one is refused with its field named, exit 2, nothing sent. A
write prints what was written and how many of its gateways acknowledged it ("applied on 1
of 3"); ``--wait S`` waits up to S seconds for all of them (exit 1 when some did not). A
rule is compiled here as a gateway compiles it (``gateway.rules``), together with the
fleet's rows for ``all`` and for the same target, before anything is sent.
``cybernetic/commands/fleet.py`` adds these verbs beside ``fleet status``.
"""

# ruff: noqa: T201 - a command's output (this module is part of cybernetic/commands/fleet.py)
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from amcp.fleet import (
    FLEET_PATTERNS,
    RowError,
    Target,
    check_name,
    desired_key,
    encode_desired,
    encode_zone,
    limit_key,
    limit_value,
    parse_pattern_key,
    pattern_key,
)
from cloud.authoring import Applied, Written
from cloud.config import CloudConfig
from cloud.control import (
    SOCKET_NAME,
    Answer,
    AppliedQuery,
    DesiredRemove,
    DesiredSet,
    LimitRemove,
    LimitSet,
    LimitsList,
    Marks,
    PatternRemove,
    PatternSet,
    PatternsList,
    Request,
    ZoneRemove,
    ZoneSet,
    send,
)
from cybernetic.cli import (
    FAILED,
    OK,
    UNREACHABLE,
    CliError,
    describe_os_error,
    iso_ms,
    one_line,
    require_config,
)
from cybernetic.commands.patterns import rule_args
from gateway.rules import (
    ActionSpec,
    BuildRefusedError,
    PatternRule,
    Rule,
    RuleFileError,
    SituationRule,
    Sourced,
    WindowRule,
    build_rules,
    decode_rule,
    encode_rule,
    load_rule_file,
)

POLL_S = 0.2


def register_authoring(verbs: Any) -> list[argparse.ArgumentParser]:
    """Add the authoring verbs to ``fleet``'s subparsers; returns every leaf parser (for the
    group's ``-c`` option)."""
    leaves: list[argparse.ArgumentParser] = []
    _limit_verbs(verbs, leaves)
    _desired_verbs(verbs, leaves)
    _pattern_verbs(verbs, leaves)
    _zone_verbs(verbs, leaves)
    applied = _leaf(verbs, leaves, "applied", "which gateways acknowledged a row", _applied)
    applied.add_argument("namespace", help=f"limits, zones, twin.desired or {FLEET_PATTERNS}")
    applied.add_argument("key", help="the row's key, e.g. all/device/flood")
    applied.add_argument("--target", help="whose acknowledgement counts (default from the key)")
    _waits(applied)
    _leaf(verbs, leaves, "marks", "every gateway's sync marks (what it acknowledged)", _marks)
    return leaves


def _leaf(
    group: Any, leaves: list[argparse.ArgumentParser], name: str, text: str, handler: Any
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = group.add_parser(name, help=text)
    p.add_argument("--json", action="store_true", help="print the cloud's answer as JSON")
    p.set_defaults(handler=handler)
    leaves.append(p)
    return p


def _waits(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="wait up to S seconds until every gateway of the target acknowledged it",
    )


def _limit_verbs(verbs: Any, leaves: list[argparse.ArgumentParser]) -> None:
    limit = verbs.add_parser("limit", help="rate limits for devices, capabilities, principals")
    group = limit.add_subparsers(dest="limit_verb", metavar="VERB", required=True)
    lset = _leaf(group, leaves, "set", "set a limit (rows on top of [s2.limits])", _limit_set)
    _target(lset)
    lset.add_argument(
        "key", metavar="SCOPE/NAME", help="device/NAME, capability/NAME or principal/NAME"
    )
    lset.add_argument("--rate", required=True, help="events per second (> 0)")
    lset.add_argument("--burst", default="1", help="events at once (>= 1, default 1)")
    _waits(lset)
    text = "remove a limit (the gateways' configured value applies again)"
    lrm = _leaf(group, leaves, "remove", text, _limit_rm)
    _target(lrm)
    lrm.add_argument("key", metavar="SCOPE/NAME")
    _waits(lrm)
    text = "list the limits rows (of one target, or all)"
    llist = _leaf(group, leaves, "list", text, _limit_list)
    llist.add_argument("target", nargs="?", metavar="TARGET", help="all, zone/ZONE or gw/ID")


def _desired_verbs(verbs: Any, leaves: list[argparse.ArgumentParser]) -> None:
    desired = verbs.add_parser("desired", help="desired twin values of devices")
    group = desired.add_subparsers(dest="desired_verb", metavar="VERB", required=True)
    dset = _leaf(group, leaves, "set", "set a device's desired field", _desired_set)
    _target(dset)
    dset.add_argument("device")
    dset.add_argument("field")
    dset.add_argument("value", help="JSON (a bare word is a string)")
    _waits(dset)
    drm = _leaf(group, leaves, "remove", "remove a device's desired field", _desired_rm)
    _target(drm)
    drm.add_argument("device")
    drm.add_argument("field")
    _waits(drm)


def _pattern_verbs(verbs: Any, leaves: list[argparse.ArgumentParser]) -> None:
    pattern = verbs.add_parser("pattern", help="GoldRush rules for gateways (docs/rules.md)")
    group = pattern.add_subparsers(dest="pattern_verb", metavar="VERB", required=True)
    text = "set a rule (over the gateways' own rules of that id)"
    pset = _leaf(group, leaves, "set", text, _pattern_set)
    _target(pset)
    pset.add_argument(
        "id", nargs="?", metavar="ID", help="the rule id (with --file: that rule only; default all)"
    )
    rule_args(pset)
    _waits(pset)
    prm = _leaf(group, leaves, "remove", "remove a rule the cloud set", _pattern_rm)
    _target(prm)
    prm.add_argument("id", metavar="ID")
    _waits(prm)
    text = "list the cloud's pattern rows (of one target, or all)"
    plist = _leaf(group, leaves, "list", text, _pattern_list)
    plist.add_argument("target", nargs="?", metavar="TARGET", help="all, zone/ZONE or gw/ID")


def _zone_verbs(verbs: Any, leaves: list[argparse.ArgumentParser]) -> None:
    zone = verbs.add_parser("zone", help="zone membership of gateways")
    group = zone.add_subparsers(dest="zone_verb", metavar="VERB", required=True)
    zset = _leaf(group, leaves, "set", "put a gateway in a zone", _zone_set)
    zset.add_argument("gateway")
    zset.add_argument("zone")
    _waits(zset)
    zrm = _leaf(group, leaves, "remove", "give a gateway back its configured zone", _zone_rm)
    zrm.add_argument("gateway")
    _waits(zrm)


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", help="all, zone/ZONE or gw/GATEWAY")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"not a number of seconds from 0 to 3600: {text!r}")
    return value


def _number(text: str) -> float | str:
    """The number typed, or the text itself (the schema then names the field)."""
    try:
        return float(text)
    except ValueError:
        return text


def _integer(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        return _number(text)


# -- checks before anything is sent ---------------------------------------------------------
def _checked(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except RowError as exc:
        raise CliError(f"{what} refused: {exc} (nothing written)") from None


def _parse_target(text: str) -> Target:
    return _checked("target", Target.parse, text)  # type: ignore[no-any-return]


def _scope_name(target: Target, key: str) -> None:
    scope, sep, name = key.partition("/")
    if not sep:
        raise CliError(f"limit refused: key: {key!r}: give SCOPE/NAME, e.g. device/flood")
    _checked("limit", limit_key, target, scope, name)


# -- the socket -----------------------------------------------------------------------------
def _socket(args: argparse.Namespace) -> Path:
    config = require_config(args.config, CloudConfig)
    return Path(config.cloud.state_dir) / SOCKET_NAME


def _ask(args: argparse.Namespace, request: Request) -> Answer:
    path = _socket(args)
    try:
        answer = send(path, request)
    except (FileNotFoundError, ConnectionRefusedError):
        raise CliError(
            f"no cloud answers at {path}: is the cloud running? (fleet verbs write through "
            "the running cloud)",
            UNREACHABLE,
        ) from None
    except OSError as exc:
        raise CliError(
            f"the cloud's control socket {path}: {describe_os_error(exc)}", UNREACHABLE
        ) from None
    if not answer.ok:
        code = {"invalid": 2, "not_found": FAILED}.get(answer.error, FAILED)
        raise CliError(f"the cloud refused it ({answer.error}): {answer.detail}", code)
    return answer


def _wait(args: argparse.Namespace, answer: Answer) -> Answer:
    """Poll the applied marks until every gateway acknowledged (or ``--wait`` ran out)."""
    deadline = time.monotonic() + getattr(args, "wait", 0.0)
    while (
        answer.applied is not None
        and answer.written is not None
        and answer.applied.pending
        and time.monotonic() < deadline
    ):
        time.sleep(POLL_S)
        w = answer.written
        answer = _ask(args, AppliedQuery(namespace=w.namespace, key=w.key, target=w.target))
    return answer


def _report(args: argparse.Namespace, answer: Answer, what: str) -> int:
    answer = _wait(args, answer)
    written, applied = answer.written, answer.applied
    if args.json:
        print(json.dumps({"written": _plain(written), "applied": _plain(applied)}, sort_keys=True))
    elif written is not None and applied is not None:
        print(_line(written, applied, what))
    if written is not None and written.removed and not written.existed:
        if not args.json:
            print(f"error: no such row: {written.namespace} {written.key}", file=sys.stderr)
        return FAILED
    if getattr(args, "wait", 0.0) and applied is not None and applied.pending:
        return FAILED
    return OK


def _plain(value: Any) -> Any:
    import msgspec  # noqa: PLC0415 - only for --json

    return msgspec.to_builtins(value)


def _line(written: Written, applied: Applied, what: str) -> str:
    verb = "removed" if written.removed else "set"
    if written.removed and not written.existed:
        verb = "not found"
    head = f"{verb} {written.namespace} {written.key}{what} (version {written.version})"
    tail = f"{applied.summary()} (target {written.target})"
    if applied.pending:
        names = ", ".join(applied.pending[:10])
        more = f" and {len(applied.pending) - 10} more" if len(applied.pending) > 10 else ""
        tail += f"; not yet: {names}{more}"
    return f"{head}: {tail}"


# -- the verbs ------------------------------------------------------------------------------
def _limit_set(args: argparse.Namespace) -> int:
    target = _parse_target(args.target)
    _scope_name(target, args.key)
    value = _checked("limit", limit_value, _number(args.rate), _integer(args.burst))
    answer = _ask(
        args, LimitSet(target=str(target), key=args.key, rate=value.rate, burst=value.burst)
    )
    return _report(args, answer, f" = rate {value.rate:g}/s burst {value.burst}")


def _limit_rm(args: argparse.Namespace) -> int:
    target = _parse_target(args.target)
    _scope_name(target, args.key)
    return _report(args, _ask(args, LimitRemove(target=str(target), key=args.key)), "")


def _limit_list(args: argparse.Namespace) -> int:
    target = None if args.target is None else str(_parse_target(args.target))
    rows = _ask(args, LimitsList(target=target)).limits or {}
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return OK
    for key, value in sorted(rows.items()):
        print(f"{key:<40} rate {value['rate']:g}/s burst {value['burst']}")
    if not rows:
        print("no limits rows", file=sys.stderr)
    return OK


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _desired_set(args: argparse.Namespace) -> int:
    target = _parse_target(args.target)
    _checked("desired value", desired_key, args.device, args.field)
    value = _json_value(args.value)
    _checked("desired value", encode_desired, value)
    request = DesiredSet(target=str(target), device=args.device, field=args.field, value=value)
    return _report(args, _ask(args, request), f" = {json.dumps(value)}")


def _desired_rm(args: argparse.Namespace) -> int:
    target = _parse_target(args.target)
    _checked("desired value", desired_key, args.device, args.field)
    request = DesiredRemove(target=str(target), device=args.device, field=args.field)
    return _report(args, _ask(args, request), "")


def _file_rules(args: argparse.Namespace) -> dict[str, Rule]:
    if args.file.is_dir():
        raise CliError(f"--file {args.file} is a directory: give a patterns file")
    try:
        found = load_rule_file(args.file)
        rules = found.rules()
    except RuleFileError as exc:
        raise CliError(f"{one_line(str(exc))} (nothing written)") from None
    if found.actions:  # named actions of the file travel inline, as `patterns add` does
        rules = {rid: _inline(rule, found.actions) for rid, rule in rules.items()}
    if args.id is not None:
        if args.id not in rules:
            raise CliError(f"{args.file} has no rule {args.id!r} (nothing written)")
        rules = {args.id: rules[args.id]}
    if not rules:
        raise CliError(f"{args.file} has no rules (nothing written)")
    return rules


def _authored_rules(args: argparse.Namespace) -> dict[str, Rule]:
    """The rules the arguments describe, by id (the same options as ``patterns add``)."""
    if args.file is not None:
        return _file_rules(args)
    if args.id is None:
        raise CliError("give a rule id (or --file)")
    given = {"actions": args.action, "cooldown_s": args.cooldown, "description": args.description}
    common: dict[str, Any] = {k: v for k, v in given.items() if v}  # the stored form omits defaults
    if args.when is not None:
        return {args.id: PatternRule(when=args.when, **common)}
    if args.window is not None:
        rule = WindowRule(
            pattern=args.window,
            count=args.count,
            within_s=args.within,
            kind="tumbling" if args.tumbling else "sliding",
            **common,
        )
        return {args.id: rule}
    if args.situation is not None:
        return {args.id: SituationRule(when=args.situation, within_s=args.within, **common)}
    raise CliError("nothing to set: give --when, --window, --situation or --file")


def _inline(rule: Rule, named: dict[str, ActionSpec]) -> Rule:
    actions = [named.get(a, a) if isinstance(a, str) else a for a in rule.actions]
    return msgspec.structs.replace(rule, actions=actions)


def _compile(args: argparse.Namespace, target: Target, rules: dict[str, Rule]) -> None:
    """Compile the new rules as a gateway would, with the fleet's rows for ``all`` and for
    this target (a window may watch a pattern set there); refuse with the error, exit 2."""
    rows = _ask(args, PatternsList()).patterns or {}
    existing: dict[str, Rule] = {}
    for scope in dict.fromkeys((Target.all(), target)):  # the target's own rows win
        for key, doc in rows.items():
            try:
                parsed = parse_pattern_key(key)
                if parsed.target == scope:
                    existing[parsed.rule] = decode_rule(json.dumps(doc).encode())
            except (RowError, msgspec.ValidationError, msgspec.DecodeError):
                continue  # a row the gateways refuse already; not this command's to judge
    docs = {rid: Sourced(rule, "fleet") for rid, rule in (existing | rules).items()}
    try:
        result = build_rules(docs, {}, {}, clock=lambda: 0.0)
    except BuildRefusedError as exc:
        raise CliError(f"the rule set cannot be built: {one_line(str(exc))}") from None
    refused = [r for r in result.refused if r.rule_id in rules]
    if refused:
        text = "; ".join(f"rule {r.rule_id!r} refused: {one_line(r.error)}" for r in refused)
        raise CliError(f"{text} (nothing written)")


def _pattern_set(args: argparse.Namespace) -> int:
    target = _parse_target(args.target)
    rules = _authored_rules(args)
    for rid in rules:
        _checked("pattern", pattern_key, target, rid)
    _compile(args, target, rules)
    code = OK
    for rid, rule in rules.items():
        document = json.loads(encode_rule(rule))
        answer = _ask(args, PatternSet(target=str(target), rule=rid, document=document))
        code = max(code, _report(args, answer, f" ({rule.__struct_config__.tag})"))
    return code


def _pattern_rm(args: argparse.Namespace) -> int:
    target = _parse_target(args.target)
    _checked("pattern", pattern_key, target, args.id)
    return _report(args, _ask(args, PatternRemove(target=str(target), rule=args.id)), "")


def _pattern_list(args: argparse.Namespace) -> int:
    target = None if args.target is None else str(_parse_target(args.target))
    rows = _ask(args, PatternsList(target=target)).patterns or {}
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return OK
    for key, doc in sorted(rows.items()):
        body = doc if isinstance(doc, dict) else {}
        what = body.get("when") or body.get("pattern") or ""
        text = what if isinstance(what, str) else "<ast>"
        print(f"{key:<40} {body.get('type', '?'):<9} {text}")
    if not rows:
        print("no pattern rows", file=sys.stderr)
    return OK


def _zone_set(args: argparse.Namespace) -> int:
    _checked("zone", check_name, "gateway", args.gateway)
    _checked("zone", encode_zone, args.zone)
    answer = _ask(args, ZoneSet(gateway=args.gateway, zone=args.zone))
    return _report(args, answer, f" = {args.zone}")


def _zone_rm(args: argparse.Namespace) -> int:
    _checked("zone", check_name, "gateway", args.gateway)
    return _report(args, _ask(args, ZoneRemove(gateway=args.gateway)), "")


def _applied(args: argparse.Namespace) -> int:
    if args.target is not None:
        _parse_target(args.target)
    answer = _ask(args, AppliedQuery(namespace=args.namespace, key=args.key, target=args.target))
    code = _report(args, answer, "")
    return code if args.wait else OK


def _marks(args: argparse.Namespace) -> int:
    answer = _ask(args, Marks())
    marks = answer.marks or []
    if args.json:
        print(json.dumps({"version": answer.version, "marks": _plain(marks)}, sort_keys=True))
        return OK
    print(f"cloud store version {answer.version}; {len(marks)} gateways")
    for m in marks:
        seen = iso_ms(m.last_seen_ms) if m.last_seen_ms else "never"
        print(
            f"{m.gateway:<20} acknowledged {m.acked:<8} zone {m.zone or '-':<12} last seen {seen}"
        )
    return OK
