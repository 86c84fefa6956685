"""Rules and policy: the seed's defaults act, shadow rules are recorded and not enforced, lists and velocity
conditions work, and a bad rules file is one `file:line key` error."""
from __future__ import annotations

import pytest

from autoglm.errors import ConfigError
from autoglm_risk.policy import decide
from autoglm_risk.rules import load_rules, parse_rules

QUIET = {"amount": 30.0, "continent_jump": 0, "card_cnt_1h": 0, "card_small_cnt_1h": 0, "speed_kmh": 5.0,
         "dist_prev_km": 2.0, "device_id": 1, "country": "CN"}


def test_the_seed_defaults():
    rules = load_rules()
    assert decide(rules, QUIET, 0.01).decision == "approve"
    assert decide(rules, QUIET, 0.01).hits == []
    big = decide(rules, {**QUIET, "amount": 50_000.01}, 0.01)
    assert big.decision == "strong_verify" and [h.rule for h in big.hits] == ["large_amount"]
    assert decide(rules, {**QUIET, "amount": 50_000}, 0.01).decision == "approve"  # "above", not "at"
    jump = decide(rules, {**QUIET, "continent_jump": 1}, 0.01)
    assert jump.decision == "approve" and jump.flagged and jump.hits[0].rule == "ip_continent_jump"
    reject = decide(rules, QUIET, 0.86)
    assert reject.decision == "block" and reject.decided_by == "model_score_reject"
    assert decide(rules, QUIET, 0.85).decision == "review"  # band, below the reject rule
    assert decide(rules, QUIET, rules.policy.review_score - 0.01).decision == "approve"


def test_shadow_rules_are_recorded_but_not_enforced_and_modes_differ():
    rules = load_rules()
    fast = {**QUIET, "speed_kmh": 5000.0, "dist_prev_km": 8000.0}
    r = decide(rules, fast, 0.01)
    assert r.decision == "approve" and [(h.rule, h.shadow) for h in r.hits] == [("impossible_travel", True)]
    # rules only never reads the score; model only never reads the rules
    assert decide(rules, QUIET, 0.99, mode="rules").decision == "approve"
    assert decide(rules, {**QUIET, "amount": 90_000}, 0.01, mode="model").decision == "approve"
    assert decide(rules, QUIET, 0.99, mode="model").decision == "block"


def test_lists_and_velocity_conditions(tmp_path):
    rules = parse_rules("""
version: 7
lists: {bad_devices: [42, 43], watch: [KP]}
rules:
  - {id: dev, when: {field: device_id, in_list: bad_devices}, action: block}
  - {id: burst, velocity: {entity: user, window: 1h, count: 5}, action: review}
  - {id: spend, velocity: {entity: card, window: 24h, sum: 1000}, action: strong_verify}
  - {id: any, when: {any: [{field: country, in_list: watch}, {field: amount, op: ">=", value: 9999}]}, action: review}
""")
    assert rules.version == 7
    assert decide(rules, {"device_id": 42}, None).decision == "block"
    assert decide(rules, {"device_id": 44}, None).decision == "approve"
    assert decide(rules, {"user_cnt_1h": 5}, None).decision == "review"
    assert decide(rules, {"user_cnt_1h": 4}, None).decision == "approve"
    assert decide(rules, {"card_sum_24h": 1500.0}, None).decision == "strong_verify"
    assert decide(rules, {"country": "KP"}, None).decision == "review"
    assert decide(rules, {"amount": float("nan")}, None).decision == "approve"  # no history matches nothing


@pytest.mark.parametrize("text, where", [
    ("version: 1\nrules:\n  - id: a\n    when: {field: amount, op: '>', value: 1}\n    action: blok\n",
     "<rules>:5 rules[0].action"),
    ("version: 1\nrules:\n  - id: a\n    when: {field: ammount, op: '>', value: 1}\n    action: block\n",
     "<rules>:4 rules[0].when.field"),
    ("version: 1\nrules:\n  - id: a\n    when: {field: device_id, in_list: nope}\n    action: block\n",
     "<rules>:4 rules[0].when.in_list"),
    ("version: 1\nrules:\n  - id: a\n    velocity: {entity: user, window: 2h, count: 3}\n    action: review\n",
     "<rules>:4 rules[0].velocity.window"),
    ("version: 1\nrules:\n  - id: a\n    when: {field: amount, op: '>', value: 1}\n    action: review\n"
     "    shadoww: true\n", "<rules>:6 rules[0].shadoww"),
    ("rules:\n  - id: a\n    when: {field: amount, op: '>', value: 1}\n    action: review\n", "<rules>:1 version"),
])
def test_bad_rule_files_name_file_line_and_key(text, where):
    with pytest.raises(ConfigError) as e:
        parse_rules(text)
    assert str(e.value).startswith(where), str(e.value)


def test_a_typo_gets_a_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean amount"):
        parse_rules("version: 1\nrules:\n  - {id: a, when: {field: ammount, op: '>', value: 1}, action: block}\n")
