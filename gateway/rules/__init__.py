"""GoldRush rules in the gateway: patterns from the cloud and local files, run at ingest.

- :mod:`gateway.rules.model`: the stored documents (rules and actions) and patterns files;
- :mod:`gateway.rules.manager`: builds a rule set off the event loop and swaps it whole;
- :mod:`gateway.rules.actions`: events, alerts, algedonic signals, commands, capabilities;
- :mod:`gateway.rules.service`: the ingest stage and the supervised child.

See docs/rules.md.
"""

from gateway.rules.actions import ActionRunner, Capability, PermanentActionError
from gateway.rules.manager import (
    BuildRefusedError,
    PatternManager,
    Refusal,
    RuleSet,
    Sourced,
    build_rules,
)
from gateway.rules.model import (
    BUILTIN_ACTIONS,
    ActionSpec,
    AlgedonicAction,
    CapabilityAction,
    CommandAction,
    EventAction,
    PatternRule,
    Rule,
    RuleFile,
    RuleFileError,
    SituationRule,
    WindowRule,
    decode_rule,
    encode_rule,
    load_rule_file,
)
from gateway.rules.service import RulesService
from gateway.rules.settings import STORE_FILE, STORE_NAMESPACE, RulesSettings

__all__ = [
    "BUILTIN_ACTIONS",
    "STORE_FILE",
    "STORE_NAMESPACE",
    "ActionRunner",
    "ActionSpec",
    "AlgedonicAction",
    "BuildRefusedError",
    "Capability",
    "CapabilityAction",
    "CommandAction",
    "EventAction",
    "PatternManager",
    "PatternRule",
    "PermanentActionError",
    "Refusal",
    "Rule",
    "RuleFile",
    "RuleFileError",
    "RuleSet",
    "RulesService",
    "RulesSettings",
    "SituationRule",
    "Sourced",
    "WindowRule",
    "build_rules",
    "decode_rule",
    "encode_rule",
    "load_rule_file",
]
