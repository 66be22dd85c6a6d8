"""What a policy decides about one reading.

Decisions for allow/deny/flag are immutable and shared: the host builds one per rule when it
loads an agent, so deciding costs a table lookup, not an allocation. Only a transform carries
per-reading data (the reading's values with the assigned fields replaced).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Action = Literal["allow", "deny", "flag", "transform"]
ACTION_CODES: dict[str, int] = {"allow": 0, "deny": 1, "flag": 2, "transform": 3}
"""The low two bits of a decision code (see docs/policy-language.md, "ABI")."""


class Decision(msgspec.Struct, frozen=True, omit_defaults=True):
    """The verdict on one reading.

    ``rule_id`` is 0 for the policy's default and ``n`` for the n-th rule (1-based);
    ``values`` is set only for ``transform``: the reading's full values after the rule.
    """

    action: Action
    reason: str
    rule_id: int = 0
    rule: str | None = None
    values: dict[str, Any] | None = None


def make_decision(
    action: Action, rule_id: int, rule: str | None, reason: str, values: dict[str, Any] | None
) -> Decision:
    return Decision(action=action, reason=reason, rule_id=rule_id, rule=rule, values=values)
