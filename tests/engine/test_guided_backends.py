"""The guided-backend registry and the llguidance backend, driven by a random "model".

The driver does what :class:`~autoglm.engine.core.EngineCore` does each step: the batched fast masks
(``compute_masks``), a random pick among the allowed tokens, ``recheck`` and, when refused, a pick from
the exact mask. Whatever it picks, the output must satisfy every keyword of the schema (formats
checked by ``jsonschema``'s FormatChecker) and be finished within max_tokens.
"""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from autoglm.engine.guided import (  # noqa: E402
    compute_masks,
    get_backend,
    min_tokens_needed,
    recheck,
    resolve_backend,
    validate_spec,
)
from autoglm.engine.io_struct import GuidedSpec  # noqa: E402
from autoglm.errors import InvalidRequestError  # noqa: E402

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("hostname")
def _hostname(value: object) -> bool:
    return not isinstance(value, str) or bool(re.fullmatch(
        r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
        value))


@FORMATS.checks("time")
def _time(value: object) -> bool:  # RFC 3339 full-time; second 60 is a leap second (jsonschema refuses it)
    return not isinstance(value, str) or bool(re.fullmatch(
        r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])", value))


@FORMATS.checks("duration")
def _duration(value: object) -> bool:  # RFC 3339 appendix A, as llguidance implements it
    return not isinstance(value, str) or bool(re.fullmatch(
        r"P(?:(?:\d+Y)?(?:\d+M)?(?:\d+D)?(?:T(?=\d)(?:\d+H)?(?:\d+M)?(?:\d+S)?)?|\d+W)", value)) and value != "P"


@pytest.fixture(scope="module")
def tok(demo_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_dir))


def drive(tokenizer, spec, budget: int, seed: int, backend: str = "llguidance") -> tuple[str, int, bool]:
    rng = np.random.default_rng(seed)
    c = get_backend(backend).build(spec, tokenizer)
    special = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    out: list[int] = []
    while not c.done and len(out) < budget:
        left = budget - len(out)
        mask = compute_masks([c], [left])[0]
        assert mask.shape == (len(tokenizer),) and not mask[sorted(special)].any()
        pick = int(rng.choice(np.flatnonzero(mask)))
        if recheck([c], [pick], [left]):
            pick = int(rng.choice(np.flatnonzero(c.exact_mask(left))))
        c.advance(pick)
        out.append(pick)
    eos = bool(out) and out[-1] == tokenizer.eos_token_id
    return tokenizer.decode(out[:-1] if eos else out), len(out), c.done


KEYWORDS = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "when": {"type": "string", "format": "date-time"},
        "day": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "time"},
        "took": {"type": "string", "format": "duration"},
        "mail": {"type": "string", "format": "email"},
        "host": {"type": "string", "format": "hostname"},
        "v4": {"type": "string", "format": "ipv4"},
        "v6": {"type": "string", "format": "ipv6"},
        "id": {"type": "string", "format": "uuid"},
        "score": {"type": "integer", "minimum": 3, "maximum": 70, "multipleOf": 7},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "neg": {"type": "integer", "maximum": -5},
    },
    "additionalProperties": False,
}
KEYWORDS["required"] = list(KEYWORDS["properties"])


def test_every_keyword_is_enforced_over_many_seeds(tok):
    spec = GuidedSpec("json_schema", KEYWORDS)
    lo = min_tokens_needed(spec)
    assert lo > 19 + 10 + 36  # the formats' shortest values count in the early-400 bound
    for seed in range(12):
        text, used, done = drive(tok, spec, 400, seed)
        assert done and used <= 400, text
        value = json.loads(text)
        jsonschema.validate(value, KEYWORDS, format_checker=FORMATS)


def test_closed_before_max_tokens_at_tight_budgets(tok):
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "pattern": "^[a-z]{4,}$"},
        "tags": {"type": "array", "items": {"type": "string", "format": "ipv4"}, "minItems": 1},
        "n": {"type": "number"}}, "required": ["name", "tags"], "additionalProperties": False}
    spec = GuidedSpec("json_schema", schema)
    lo = min_tokens_needed(spec)
    refused = 0
    for budget in (lo, lo + 1, lo + 3, lo + 8, 2 * lo):
        for seed in range(6):
            c_text, used, done = drive(tok, spec, budget, seed * 100 + budget)
            assert done and used <= budget, (budget, c_text)
            jsonschema.validate(json.loads(c_text), schema, format_checker=FORMATS)
    # the same with no budget filter runs out: the filter is what closes the value
    c = get_backend("llguidance").build(spec, tok)
    c.shadow = None
    rng = np.random.default_rng(0)
    for _ in range(lo):
        c.advance(int(rng.choice(np.flatnonzero(compute_masks([c], [1])[0]))))
        refused += not c.done
    assert not c.done and refused == lo


def test_json_mode_and_top_level_number(tok):
    for seed in range(6):
        text, used, done = drive(tok, GuidedSpec("json_object"), 40, seed)
        assert done and isinstance(json.loads(text), dict)
        text, used, done = drive(tok, GuidedSpec("json_schema", {"type": "number", "minimum": 0}), 12, seed)
        assert done and json.loads(text) >= 0


def test_vllm_regex_choice_and_grammar(tok):
    for seed in range(8):
        text, _, done = drive(tok, GuidedSpec("regex", regex=r"[A-Z][a-z]{2,5} [0-9]{2}"), 30, seed)
        assert done and re.fullmatch(r"[A-Z][a-z]{2,5} [0-9]{2}", text), text
        text, _, done = drive(tok, GuidedSpec("choice", choices=("positive", "negative", "neutral")), 10, seed)
        assert done and text in ("positive", "negative", "neutral")
        gbnf = 'root ::= "SELECT " col " FROM t"\ncol ::= "a" | "b" | "c"'
        text, _, done = drive(tok, GuidedSpec("grammar", grammar=gbnf), 20, seed)
        assert done and re.fullmatch(r"SELECT [abc] FROM t", text), text
        lark = 'start: "x=" NUM\nNUM: /[0-9]{1,3}/'
        text, _, done = drive(tok, GuidedSpec("grammar", grammar=lark), 20, seed)
        assert done and re.fullmatch(r"x=[0-9]{1,3}", text), text


def test_forced_tool_call_prefix(tok):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"],
              "additionalProperties": False}
    spec = SimpleNamespace(kind="json_schema", schema=schema, prefix="get_weather\n")
    lo = min_tokens_needed(spec)
    for budget in (lo, 40):
        for seed in range(4):
            text, used, done = drive(tok, spec, budget, seed)
            name, args = text.split("\n", 1)
            assert done and used <= budget and name == "get_weather"
            jsonschema.validate(json.loads(args), schema)


def test_both_backends_agree_on_plain_schemas(tok):
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0},
                                               "b": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
              "required": ["a"], "additionalProperties": False}
    spec = GuidedSpec("json_schema", schema)
    for backend in ("builtin", "llguidance"):
        for seed in range(4):
            text, used, done = drive(tok, spec, min_tokens_needed(spec) + seed, seed, backend)
            assert done
            jsonschema.validate(json.loads(text), schema)


def test_registry_and_clear_errors(tok):
    assert resolve_backend("auto") == "llguidance"
    assert resolve_backend("builtin") == "builtin"
    with pytest.raises(ValueError, match="guided_backend"):
        resolve_backend("xgrammar")
    with pytest.raises(InvalidRequestError, match="llguidance"):
        get_backend("builtin").build(GuidedSpec("regex", regex="a+"), tok)
    with pytest.raises(InvalidRequestError, match="guided_regex"):
        validate_spec(GuidedSpec("regex", regex="a(b"))
    with pytest.raises(InvalidRequestError, match="guided_grammar"):
        validate_spec(GuidedSpec("grammar", grammar="root ::= missing_rule"))
    validate_spec(GuidedSpec("choice", choices=("a", "b")))


def test_engine_core_uses_its_configured_backend(tok):
    from autoglm.engine.core import EngineCore
    from autoglm.engine.io_struct import EngineRequest, SamplingParams

    def request(spec: GuidedSpec) -> EngineRequest:
        return EngineRequest("r", [1, 2, 3], SamplingParams(max_tokens=50, guided=spec))

    builtin = EngineCore(SimpleNamespace(), tok, max_model_len=256, guided_backend="builtin")
    with pytest.raises(InvalidRequestError, match="llguidance"):
        builtin.add_request(request(GuidedSpec("regex", regex="[0-9]+")))
    builtin.add_request(request(GuidedSpec("json_object")))
    assert builtin.scheduler.get("r").extra["constraint"].backend == "builtin"
    core = EngineCore(SimpleNamespace(), tok, max_model_len=256, guided_backend="llguidance")
    core.add_request(request(GuidedSpec("regex", regex="[0-9]+")))
    assert core.scheduler.get("r").extra["constraint"].backend == "llguidance"
    with pytest.raises(InvalidRequestError, match="guided_backend"):
        EngineCore(SimpleNamespace(), tok, max_model_len=256, guided_backend="nope").add_request(
            request(GuidedSpec("json_object")))
