"""Rules in YAML, with versions: conditions on a transaction's fields, its features and the model score.

A rules file (``data/rules.yaml`` is the default, holding the seed's three rules)::

    version: 3                       # bumps with every change; every decision records it
    lists:
      blocked_devices: [900001]
      blocked_countries: [KP]
    policy: {review_score: 0.5}      # see autoglm_risk.policy
    rules:
      - id: large_amount
        when: {field: amount, op: ">", value: 50000}
        action: strong_verify
      - id: velocity_user_1h
        velocity: {entity: user, window: 1h, count: 8}   # sugar for user_cnt_1h >= 8
        action: review
        shadow: true                 # evaluated and recorded, never enforced

A condition is ``{field, op, value}`` (ops ``> >= < <= == !=``), ``{field, in_list: NAME}`` /
``{field, not_in_list: NAME}``, or ``all:`` / ``any:`` of conditions. ``velocity:`` is a count or sum
over a window (``count: N`` means at least N earlier transactions; ``sum: X`` at least X spent). Actions,
weakest first: ``flag`` (record and flag, e.g. the seed's continent jump), ``review``,
``strong_verify``, ``block``. A rule with ``shadow: true`` is evaluated and recorded but does not
change the decision. A mistake in the file is one ``file:line key`` error (``autoglm.configfile``),
unknown fields and lists with a did-you-mean.

This module knows nothing about models or HTTP; it evaluates :class:`RuleSet` on a dict of values.
"""
from __future__ import annotations

import difflib
import operator
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoglm.configfile import Loc, load_yaml_config, parse_yaml_config
from autoglm_risk.features import FEATURES, INCOMING_FIELDS, WINDOWS

__all__ = ["RuleSet", "Rule", "RuleHit", "load_rules", "parse_rules", "default_rules_path", "ACTIONS",
           "FIELDS"]

ACTIONS = ("flag", "review", "strong_verify", "block")  # weakest first
FIELDS = sorted(set(FEATURES) | set(INCOMING_FIELDS) | {"score", "ip", "prev_continent"})
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
        "!=": operator.ne}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    field: Optional[str] = None
    op: Optional[Literal[">", ">=", "<", "<=", "==", "!="]] = None
    value: Any = None
    in_list: Optional[str] = None
    not_in_list: Optional[str] = None
    all: Optional[list["Condition"]] = None
    any: Optional[list["Condition"]] = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Condition":
        kinds = [k for k in ("op", "in_list", "not_in_list", "all", "any") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a condition is one of {field, op, value}, {field, in_list}, {field, not_in_list}, "
                             f"all: [...] or any: [...]; got {', '.join(kinds) or 'none of them'}")
        if kinds[0] in ("op", "in_list", "not_in_list") and not self.field:
            raise ValueError(f"a condition with {kinds[0]} needs a field")
        if kinds[0] == "op" and self.value is None:
            raise ValueError("a comparison needs a value")
        return self

    def test(self, values: dict[str, Any], lists: dict[str, frozenset]) -> bool:
        if self.all is not None:
            return all(c.test(values, lists) for c in self.all)
        if self.any is not None:
            return any(c.test(values, lists) for c in self.any)
        v = values.get(self.field)
        if self.in_list is not None:
            return v is not None and _key(v) in lists[self.in_list]
        if self.not_in_list is not None:
            return v is not None and _key(v) not in lists[self.not_in_list]
        if v is None or (isinstance(v, float) and v != v):
            return False  # a feature without history (NaN) matches no comparison
        try:
            return bool(_OPS[self.op](v, self.value))
        except TypeError:
            return False

    def fields(self) -> list[tuple[Loc, str]]:
        if self.all is not None or self.any is not None:
            key = "all" if self.all is not None else "any"
            return [((key, i) + loc, f) for i, c in enumerate(getattr(self, key)) for loc, f in c.fields()]
        return [(("field",), self.field)] if self.field else []

    def list_names(self) -> list[tuple[Loc, str]]:
        if self.all is not None or self.any is not None:
            key = "all" if self.all is not None else "any"
            return [((key, i) + loc, n) for i, c in enumerate(getattr(self, key)) for loc, n in c.list_names()]
        return [((k,), getattr(self, k)) for k in ("in_list", "not_in_list") if getattr(self, k) is not None]


class Velocity(_Strict):
    entity: Literal["user", "card", "device"]
    window: Literal["1h", "24h", "7d"]
    count: Optional[int] = Field(None, ge=1)
    sum: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> "Velocity":
        if (self.count is None) == (self.sum is None):
            raise ValueError("velocity takes one of count (earlier transactions) or sum (amount spent)")
        return self

    def condition(self) -> Condition:
        if self.count is not None:
            return Condition(field=f"{self.entity}_cnt_{self.window}", op=">=", value=self.count)
        return Condition(field=f"{self.entity}_sum_{self.window}", op=">=", value=self.sum)


class Rule(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str = ""
    when: Optional[Condition] = None
    velocity: Optional[Velocity] = None
    action: Literal["flag", "review", "strong_verify", "block"]
    shadow: bool = False
    enabled: bool = True

    @model_validator(mode="after")
    def _has_condition(self) -> "Rule":
        if (self.when is None) == (self.velocity is None):
            raise ValueError("a rule has exactly one of when: (a condition) or velocity:")
        return self

    @property
    def condition(self) -> Condition:
        return self.when if self.when is not None else self.velocity.condition()

    def uses_score(self) -> bool:
        return any(f == "score" for _, f in self.condition.fields())


class PolicySettings(_Strict):
    review_score: float = Field(0.5, ge=0.0, le=1.0)  # score at or above: review
    strong_verify_score: Optional[float] = Field(None, ge=0.0, le=1.0)  # optional band between review and block


class RuleSet(_Strict):
    version: int = Field(ge=1)
    name: str = "rules"
    lists: dict[str, list[Union[str, int, float]]] = Field(default_factory=dict)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    rules: list[Rule] = Field(min_length=1)

    def model_post_init(self, _: Any) -> None:
        object.__setattr__(self, "_sets", {k: frozenset(_key(v) for v in vs) for k, vs in self.lists.items()})

    def evaluate(self, values: dict[str, Any], *, with_score: bool = True) -> list["RuleHit"]:
        """The rules that match ``values`` (a transaction's fields, its features and ``score``), in file
        order; ``with_score=False`` leaves out rules on the model score (the "rules only" baseline)."""
        hits = []
        for r in self.rules:
            if not r.enabled or (not with_score and r.uses_score()):
                continue
            if r.condition.test(values, self._sets):  # type: ignore[attr-defined]
                hits.append(RuleHit(r.id, r.action, r.shadow, r.description))
        return hits

    def score_threshold(self, action: str = "block") -> float | None:
        """The smallest score a ``score > x`` rule with ``action`` fires at (the seed's 0.85), if any."""
        xs = [c.value for r in self.rules if r.enabled and not r.shadow and r.action == action
              for c in [r.condition] if c.field == "score" and c.op in (">", ">=")]
        return min(xs) if xs else None


class RuleHit:
    __slots__ = ("rule", "action", "shadow", "description")

    def __init__(self, rule: str, action: str, shadow: bool, description: str = ""):
        self.rule, self.action, self.shadow, self.description = rule, action, shadow, description

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "action": self.action, "shadow": self.shadow}

    def __repr__(self) -> str:
        return f"RuleHit({self.rule!r}, {self.action!r}{', shadow' if self.shadow else ''})"


def _key(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _problems(rs: RuleSet) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(rs.rules):
        if r.id in seen:
            out.append((("rules", i, "id"), f"rule id {r.id!r} is used twice (also rules[{seen[r.id]}])"))
        seen.setdefault(r.id, i)
        if r.when is None:
            continue
        for loc, f in r.when.fields():
            if f not in FIELDS:
                near = difflib.get_close_matches(f, FIELDS, n=3)
                hint = f"; did you mean {', '.join(near)}?" if near else "; known fields include amount, score, " \
                                                                         "user_cnt_1h, continent_jump"
                out.append((("rules", i, "when") + loc, f"unknown field {f!r}{hint}"))
        for loc, name in r.when.list_names():
            if name not in rs.lists:
                near = difflib.get_close_matches(name, list(rs.lists), n=3)
                hint = f"; did you mean {', '.join(near)}?" if near else f"; define it under lists: " \
                                                                         f"(known: {', '.join(rs.lists) or 'none'})"
                out.append((("rules", i, "when") + loc, f"unknown list {name!r}{hint}"))
    return out


def parse_rules(text: str, name: str = "<rules>") -> RuleSet:
    return parse_yaml_config(text, name, RuleSet, problems=_problems, empty_hint="a rules file needs version: "
                                                                                 "and rules:")


def load_rules(path: str | Path | None = None) -> RuleSet:
    """The rules file at ``path`` (default: the shipped ``data/rules.yaml``)."""
    return load_yaml_config(path or default_rules_path(), "rules file", RuleSet, problems=_problems)


def default_rules_path() -> Path:
    return Path(__file__).parent / "data" / "rules.yaml"


assert set(WINDOWS) == {"1h", "24h", "7d"}  # Velocity.window names them
