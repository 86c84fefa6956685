"""Guided decoding against a real byte-level BPE tokenizer, driven by a random "model".

A random model is the worst client a constraint can have: it never wants to stop, picks rare
tokens, and does not care about the budget. Whatever it picks among the allowed tokens, the output
must parse, match the schema, be valid UTF-8, and be finished before max_tokens runs out.
"""
from __future__ import annotations

import glob
import json
import os
import random
import time
from types import SimpleNamespace

import numpy as np
import pytest

from autoglm.engine.guided import build_constraint, min_tokens_needed
from autoglm.engine.io_struct import GuidedSpec
from autoglm.errors import InvalidRequestError

jsonschema = pytest.importorskip("jsonschema")

ZH = "你好世界今天天气很好我们一起去公园散步吧北京上海深圳广州杭州成都东西南北中🙂"


def _corpus() -> list[str]:
    rnd = random.Random(0)
    words = ("name age city weather temperature unit celsius items price tags id value the quick "
             "brown fox location forecast days status ok error").split()
    out = []
    for _ in range(3000):
        obj = {rnd.choice(words): rnd.choice([rnd.randint(-999, 99999), round(rnd.random(), 3),
                                               rnd.choice(words), ZH[rnd.randint(0, 20):][:rnd.randint(1, 12)],
                                               None, True, False, [1, 2], {"k": "v"}])
               for _ in range(rnd.randint(1, 5))}
        out.append(json.dumps(obj, ensure_ascii=False))
        out.append(json.dumps(obj, ensure_ascii=False, indent=2))
    stdlib = os.path.dirname(json.__file__)
    for path in sorted(glob.glob(os.path.join(stdlib, "*.py"))):
        with open(path, encoding="utf-8") as f:
            out.append(f.read())
    for path in sorted(glob.glob(os.path.join(os.path.dirname(stdlib), "email", "*.py")))[:25]:
        with open(path, encoding="utf-8") as f:
            out.append(f.read())
    return out


def _train(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|user|>", "<|observation|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   additional_special_tokens=["<|user|>", "<|observation|>"])


@pytest.fixture(scope="module")
def tok():
    return _train(8000)


def _special_ids(tokenizer) -> list[int]:
    return sorted(set(tokenizer.all_special_ids))


def drive(tokenizer, spec, budget: int, seed: int, *, prefer=None, check_special=True):
    """Run a random model under the constraint; returns (text, tokens used)."""
    rng = np.random.default_rng(seed)
    c = build_constraint(spec, tokenizer)
    special = _special_ids(tokenizer)
    single = np.array([len(b or b"") == 1 for b in _token_bytes(tokenizer)])
    used = 0
    while not c.done:
        assert used < budget, f"budget {budget} spent and not done: {c.output!r}"
        mask = c.allowed_token_ids(budget - used)
        assert mask.shape == (len(tokenizer),) and mask.dtype == bool
        if check_special:
            assert not mask[special].any(), "a special token was allowed"
        ids = np.flatnonzero(mask)
        assert len(ids), f"nothing allowed after {c.output!r} with {budget - used} left"
        pick = rng.random()
        if prefer is not None and pick < 0.5 and (mask & prefer).any():
            ids = np.flatnonzero(mask & prefer)
        elif pick < 0.3 and (mask & single).any():  # short tokens make structure (quotes, commas) likelier
            ids = np.flatnonzero(mask & single)
        c.advance(int(rng.choice(ids)))
        used += 1
    assert not c.allowed_token_ids(budget - used).any(), "tokens allowed after the value was complete"
    return c.output.decode("utf-8"), used


def _token_bytes(tokenizer):
    from autoglm.engine.guided.vocab import vocab_index

    return vocab_index(tokenizer).tokens


def _budgets(spec) -> list[int]:
    lo = min_tokens_needed(spec)
    return sorted(b for b in {lo, lo + 1, lo + 2, lo + 5, 2 * lo + 3, 60, 200} if b >= lo)


def check_schema(tokenizer, schema, seeds=4, **kw):
    spec = GuidedSpec("json_schema", schema)
    outs = []
    for budget in _budgets(spec):
        for seed in range(seeds):
            text, used = drive(tokenizer, spec, budget, seed * 1000 + budget, **kw)
            assert used <= budget
            value = json.loads(text)
            jsonschema.validate(value, schema)
            outs.append(value)
    return outs


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "height": {"type": "number"},
        "member": {"type": "boolean"},
        "nickname": {"type": ["string", "null"]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_json_mode_is_always_a_complete_object(tok):
    spec = GuidedSpec("json_object")
    assert min_tokens_needed(spec) == 2 + 1  # "{}" plus the safety margin
    shapes = set()
    for budget in [3, 4, 6, 10, 25, 60, 200]:
        for seed in range(6):
            text, used = drive(tok, spec, budget, seed)
            value = json.loads(text)
            assert isinstance(value, dict)
            shapes.add(len(value))
    assert max(shapes) >= 1, "the random model never wrote a key: the mask is too strict"


def test_object_schema_required_optional_and_closed(tok):
    outs = check_schema(tok, PERSON, seeds=5)
    assert all(set(o) <= set(PERSON["properties"]) and {"name", "age"} <= set(o) for o in outs)
    assert any(len(o) > 2 for o in outs), "optional properties never chosen"
    # keys come in declaration order
    order = list(PERSON["properties"])
    for o in outs:
        idx = [order.index(k) for k in o]
        assert idx == sorted(idx)


def test_enum_const_and_literals(tok):
    schema = {
        "type": "object",
        "properties": {
            "unit": {"enum": ["celsius", "fahrenheit", "kelvin"]},
            "kind": {"const": "weather"},
            "level": {"enum": [1, 12, 123, "x", None, {"a": [1]}]},
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
        },
        "required": ["unit", "kind", "level", "flag", "nothing"],
        "additionalProperties": False,
    }
    outs = check_schema(tok, schema, seeds=6)
    assert {o["unit"] for o in outs} > {"celsius"} or len({o["unit"] for o in outs}) > 1
    assert all(o["kind"] == "weather" for o in outs)
    assert len({json.dumps(o["level"]) for o in outs}) >= 3


def test_nested_arrays_of_objects(tok):
    schema = {
        "type": "object",
        "properties": {
            "days": {
                "type": "array",
                "minItems": 1,
                "maxItems": 4,
                "items": {
                    "type": "object",
                    "properties": {
                        "day": {"type": "string", "maxLength": 10},
                        "temps": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 3},
                        "tags": {"type": "array", "items": {"type": "string", "enum": ["sun", "rain"]}},
                    },
                    "required": ["day", "temps"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["days"],
        "additionalProperties": False,
    }
    outs = check_schema(tok, schema)
    assert any(len(o["days"]) > 1 for o in outs)


def test_anyof_refs_recursion_and_free_properties(tok):
    schema = {
        "$defs": {
            "tree": {
                "type": "object",
                "properties": {"label": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/tree"}}},
                "required": ["label"],
                "additionalProperties": False,
            },
            "point": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                      "required": ["x", "y"], "additionalProperties": False},
        },
        "type": "object",
        "properties": {
            "tree": {"$ref": "#/$defs/tree"},
            "shape": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "string", "maxLength": 5},
                                {"type": "object", "properties": {"r": {"type": "number"}}, "required": ["r"],
                                 "additionalProperties": False}]},
            "extra": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
        "required": ["tree", "shape", "extra"],
    }
    check_schema(tok, schema)
    spec = GuidedSpec("json_schema", schema)
    tree = {"label": "root", "children": [{"label": "a", "children": [{"label": "b"}]}, {"label": "c"}]}
    for shape in [{"x": 1, "y": -2}, "abc", {"r": 0.5}]:
        force(tok, spec, json.dumps({"tree": tree, "shape": shape, "extra": {"n": 3, "m": 4}}))
    with pytest.raises(ValueError):  # "y" is required in a point, "z" is no property of any branch
        force(tok, spec, json.dumps({"tree": tree, "shape": {"x": 1, "z": 2}, "extra": {}}))


def test_top_level_scalars_and_arrays(tok):
    for schema in [
        {"type": "array", "items": {"type": "integer"}, "maxItems": 5},
        {"type": "integer"},
        {"type": "number"},
        {"type": "string", "minLength": 3, "maxLength": 8},
        {"type": ["boolean", "null"]},
        {"enum": [1, 12, 123]},
    ]:
        check_schema(tok, schema, seeds=3)


def test_min_tokens_needed_is_exact_and_tight(tok):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "minLength": 2}},
              "required": ["a", "b"], "additionalProperties": False}
    spec = GuidedSpec("json_schema", schema)
    minimal = '{"a":0,"b":"  "}'
    assert min_tokens_needed(spec) == len(minimal) + 1
    # at the minimum budget the random model is forced down the shortest path
    text, used = drive(tok, spec, min_tokens_needed(spec), 0)
    jsonschema.validate(json.loads(text), schema)
    # below the minimum only multi-byte tokens (which close faster than byte by byte) can still fit
    c = build_constraint(spec, tok)
    tight = c.allowed_token_ids(min_tokens_needed(spec) - 1)
    assert all(len(_token_bytes(tok)[t]) > 1 for t in np.flatnonzero(tight))
    assert not c.allowed_token_ids(2).any()


def test_chinese_strings_decode(tok):
    from autoglm.engine.guided.vocab import vocab_index

    tokens = vocab_index(tok).tokens
    non_ascii = np.array([bool(b) and any(x >= 0x80 for x in b) for b in tokens])
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "note": {"type": "string", "maxLength": 6}},
              "required": ["city", "note"], "additionalProperties": False}
    seen_zh = False
    for budget in [min_tokens_needed(GuidedSpec("json_schema", schema)), 40, 200]:
        for seed in range(5):
            text, _ = drive(tok, GuidedSpec("json_schema", schema), budget, seed, prefer=non_ascii)
            value = json.loads(text)
            jsonschema.validate(value, schema)
            seen_zh |= any("\u4e00" <= ch <= "\u9fff" for ch in value["city"] + value["note"])
    assert seen_zh


def force(tokenizer, spec, text: str, budget: int = 400) -> None:
    """Feed ``text`` in the tokenizer's own tokenization; each token must be allowed."""
    c = build_constraint(spec, tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=False)
    for i, t in enumerate(ids):
        if not c.allowed_token_ids(budget - i)[t]:
            raise ValueError(f"{tokenizer.decode([t])!r} refused after {tokenizer.decode(ids[:i])!r}")
        c.advance(t)
    assert c.done and c.output.decode() == text


def test_natural_tokenizations_of_valid_documents_are_accepted(tok):
    """A model that writes a valid document its usual way is never blocked."""
    cases = [
        (PERSON, {"name": "张三", "age": 30, "member": True, "nickname": None}),
        (PERSON, {"name": "Bob \"the\" fox\\n", "age": 0, "height": -1.75}),
        (None, {"weather": "晴天 🙂", "items": [1, 2.5, {"k": [True, False, None]}], "": {}}),
    ]
    for schema, doc in cases:
        for sep in [(",", ":"), (", ", ": ")]:
            text = json.dumps(doc, ensure_ascii=False, separators=sep)
            spec = GuidedSpec("json_schema", schema) if schema else GuidedSpec("json_object")
            force(tok, spec, text)


def _reference_mask(tokenizer, c, remaining: int) -> np.ndarray:
    """The mask by definition: feed every token's bytes to every parse, no trie, no numpy tables."""
    from autoglm.engine.guided.automaton import cell_cost

    out = np.zeros(c.vocab_size, dtype=bool)
    for t, data in enumerate(_token_bytes(tokenizer)):
        if data is None:
            continue
        cells = c._cells
        for b in data:
            cells = [n for x in cells for n in x[0].step(b, x[1])]
            if not cells:
                break
        out[t] = bool(cells) and min(cell_cost(x) for x in cells) <= remaining - 1 - c._margin
    return out


def test_fast_mask_equals_reference(tok):
    """The trie walk and the numpy string tables agree with the definition, budget cuts included."""
    checked = 0
    for spec, seed in [(GuidedSpec("json_object"), 1), (GuidedSpec("json_schema", PERSON), 2),
                       (GuidedSpec("json_schema", {"type": "object", "properties": {"s": {"type": "string", "minLength": 3,
                        "maxLength": 5}}, "required": ["s"], "additionalProperties": False}), 3)]:
        rng = np.random.default_rng(seed)
        for budget in (min_tokens_needed(spec), 40):
            c = build_constraint(spec, tok)
            used = 0
            non_ascii = np.array([bool(b) and b[0] >= 0x80 for b in _token_bytes(tok)])
            while not c.done:
                mask = c.allowed_token_ids(budget - used)
                if used % 2 == 0:
                    ref = _reference_mask(tok, c, budget - used)
                    diff = np.flatnonzero(mask != ref)
                    assert not len(diff), (c.output, [(_token_bytes(tok)[t], bool(mask[t])) for t in diff[:5]])
                    checked += 1
                pool = mask & non_ascii if rng.random() < 0.4 and (mask & non_ascii).any() else mask
                c.advance(int(rng.choice(np.flatnonzero(pool))))
                used += 1
    assert checked > 10


def test_advance_rejects_bad_tokens(tok):
    c = build_constraint(GuidedSpec("json_schema", PERSON), tok)
    with pytest.raises(ValueError, match="special"):
        c.advance(tok.eos_token_id)
    bad = tok.encode("[", add_special_tokens=False)[0]
    assert not c.allowed_token_ids(100)[bad]
    with pytest.raises(ValueError, match="not allowed"):
        c.advance(bad)
    for t in tok.encode('{"name', add_special_tokens=False):
        c.advance(t)
    with pytest.raises(ValueError):  # the schema says "name" comes first, then ':'
        c.advance(tok.encode("x", add_special_tokens=False)[0])


def test_prefix_for_forced_tool_calls(tok):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"],
              "additionalProperties": False}
    spec = SimpleNamespace(kind="json_schema", schema=schema, prefix="get_weather\n")
    assert min_tokens_needed(spec) == len('get_weather\n{"city":""}') + 1
    for budget in [min_tokens_needed(spec), 40]:
        for seed in range(4):
            text, _ = drive(tok, spec, budget, seed)
            name, args = text.split("\n", 1)
            assert name == "get_weather"
            jsonschema.validate(json.loads(args), schema)


def test_bad_schemas_are_clear_errors(tok):
    cases = [
        ({"type": "strng"}, "strng"),
        ({"$ref": "#/$defs/missing"}, "missing"),
        ({"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}, "no finite instance"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "maxLength"),
    ]
    for schema, needle in cases:
        with pytest.raises(InvalidRequestError, match=needle):
            build_constraint(GuidedSpec("json_schema", schema), tok)
    with pytest.raises(InvalidRequestError, match="schema"):
        min_tokens_needed(GuidedSpec("json_schema", None))


def test_mask_speed(tok, capsys):
    """Per-call time on an 8k vocabulary for the states a request spends its time in."""
    spec = GuidedSpec("json_schema", PERSON)
    times: dict[str, list[float]] = {}
    prefixes = {"value start": '{"name":', "in string": '{"name":"Ali', "after value": '{"name":"A"',
                "in number": '{"name":"A","age":3'}
    for label, prefix in prefixes.items():
        c = build_constraint(spec, tok)
        for t in tok.encode(prefix, add_special_tokens=False):
            c.advance(t)
        for _ in range(20):
            t0 = time.perf_counter()
            c.allowed_token_ids(500)
            times.setdefault(label, []).append(time.perf_counter() - t0)
    json_mode = build_constraint(GuidedSpec("json_object"), tok)
    for _ in range(20):
        t0 = time.perf_counter()
        json_mode.allowed_token_ids(500)
        times.setdefault("json mode open", []).append(time.perf_counter() - t0)
    with capsys.disabled():
        print("\nguided mask, 8k vocab: " + ", ".join(
            f"{k} {1000 * float(np.median(v)):.2f} ms" for k, v in times.items()))
    assert all(len(v) == 20 for v in times.values())


def test_demo_model_tokenizer(tmp_path_factory):
    """The tokenizer the project ships (GLM-4 special tokens, its own split pattern)."""
    demo = pytest.importorskip("autoglm.hub.demo")
    from transformers import AutoTokenizer

    path = demo.ensure_demo_model("autoglm-demo", tmp_path_factory.mktemp("store"))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    assert len(_special_ids(tokenizer)) > 5
    for budget in [3, 30, 120]:
        for seed in range(3):
            text, _ = drive(tokenizer, GuidedSpec("json_object"), budget, seed)
            assert isinstance(json.loads(text), dict)
    check_schema(tokenizer, PERSON, seeds=2)
    force(tokenizer, GuidedSpec("json_schema", PERSON), '{"name": "李雷", "age": 12, "nickname": null}')
