"""Rule files and the engine that runs them on events and timers.

Pure parts are exported here; the store-facing parts are imported from their modules so
that importing this package stays light (no lingua models, no store):

- :mod:`wacrm.rules.runtime`: ``RuleRuntime`` (``on_message``, ``on_status``,
  ``on_send_failed``, ``on_field_change``), what the processors call;
- :mod:`wacrm.rules.actions`: ``apply_actions``; :mod:`wacrm.rules.firings`: ``claim_firing``;
- :mod:`wacrm.rules.language`: ``LanguageDetector``;
- :mod:`wacrm.rules.options`: ``options_from``, ``install_local_options``;
- :mod:`wacrm.workers.rule_timer`: ``RuleTimer``, the durable timer.
"""

from wacrm.rules.engine import RuleEngine
from wacrm.rules.events import (
    ContactView,
    Event,
    FieldChangeEvent,
    MessageEvent,
    NoReplyEvent,
    StatusEvent,
)
from wacrm.rules.loader import load_file, load_rules, load_ruleset
from wacrm.rules.plans import PlannedAction
from wacrm.rules.schema import Rule, RuleFileError, RuleSet

__all__ = [
    "ContactView",
    "Event",
    "FieldChangeEvent",
    "MessageEvent",
    "NoReplyEvent",
    "PlannedAction",
    "Rule",
    "RuleEngine",
    "RuleFileError",
    "RuleSet",
    "StatusEvent",
    "load_file",
    "load_rules",
    "load_ruleset",
]
