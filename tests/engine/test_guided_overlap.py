"""Guided masks computed ahead on a worker thread (:mod:`autoglm.engine.guided.overlap`).

Whatever the timing, a sequence's mask is the one for its current state: over hundreds of random
steps the overlapped masks equal the serial ones; the engine samples the same tokens with and without
the overlap (and with the sampler's own mask step instead of the in-place one); a request cancelled
while its mask is in flight is harmless; a constraint llguidance cannot follow fails that one request
(or, for a JSON schema, hands over to the builtin automaton), never the engine.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

pytest.importorskip("llguidance")

from autoglm.engine.core import EngineCore  # noqa: E402
from autoglm.engine.guided import GuidedDecodingError, build_constraint, compute_masks, get_backend, recheck  # noqa: E402
from autoglm.engine.guided.overlap import GuidedMasks  # noqa: E402
from autoglm.engine.io_struct import EngineRequest, GuidedSpec, SamplingParams  # noqa: E402
from autoglm.engine.runner import BatchRunner  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
    "n": {"type": "integer", "minimum": 0, "maximum": 500},
    "x": {"type": "number"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}},
    "required": ["name", "code", "n"], "additionalProperties": False}
SPECS = [("llguidance", GuidedSpec("json_schema", SCHEMA)), ("llguidance", GuidedSpec("json_object")),
         ("llguidance", GuidedSpec("regex", regex=r"[a-z]{2,6}-[0-9]{1,3}")),
         ("llguidance", GuidedSpec("choice", choices=("red", "green", "blue"))),
         ("builtin", GuidedSpec("json_schema", SCHEMA))]
BUDGET = 60


@pytest.fixture(scope="module")
def tok(demo):
    return demo[1]


def _fresh(tok, rng: random.Random):
    backend, spec = rng.choice(SPECS)
    return [get_backend(backend).build(spec, tok), BUDGET]


def test_overlapped_masks_equal_serial_over_random_steps(tok):
    rng, pick = random.Random(0), np.random.default_rng(0)
    gm = GuidedMasks()
    live = [_fresh(tok, rng) for _ in range(6)]
    checked = 0
    for _ in range(300):
        started = [s for s in live if rng.random() < 0.8]  # the rest joined the batch since (a prefill)
        gm.start([c for c, _ in started], [r for _, r in started])
        if rng.random() < 0.2:  # a request cancelled while its mask is in flight
            live.remove(rng.choice(live))
            live.append(_fresh(tok, rng))
        cons, left = [c for c, _ in live], [r for _, r in live]
        got = gm.masks(cons, left)
        want = compute_masks(cons, left)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == np.float32 and np.array_equal(g == 0, w)
        checked += len(cons)
        for s, w in zip(live, want):  # a random model under the constraint
            c, r = s
            t = int(pick.choice(np.flatnonzero(w)))
            if recheck([c], [t], [r]):
                t = int(pick.choice(np.flatnonzero(c.exact_mask(r))))
            c.advance(t)
            s[1] -= 1
        live = [s if not s[0].done and s[1] > 0 else _fresh(tok, rng) for s in live]
    assert checked > 1500 and gm.hits > 600 and gm.misses > 100  # builtin masks are never started ahead
    gm.close()


def test_a_mask_computed_for_an_older_state_is_not_used(tok):
    gm = GuidedMasks()
    c, d = (get_backend("llguidance").build(GuidedSpec("json_schema", SCHEMA), tok) for _ in range(2))
    gm.start([c, d], [BUDGET, BUDGET])
    gm.masks([d], [BUDGET])  # waits for the worker; c's mask (for "") is ready
    c.advance(tok.encode("{", add_special_tokens=False)[0])
    hits = gm.hits
    (bias,) = gm.masks([c], [BUDGET - 1])
    assert gm.hits == hits  # stale: computed again
    assert np.array_equal(bias == 0, compute_masks([c], [BUDGET - 1])[0])


def _core(demo, **kw) -> EngineCore:
    model, tok = demo
    return EngineCore(BatchRunner(model), tok, max_model_len=512, eos_token_ids=[tok.eos_token_id],
                      guided_backend="llguidance", **kw)


def _requests():
    out = []
    for k, (_, spec) in enumerate(SPECS[:4] + SPECS[:2]):
        out.append(EngineRequest(f"g{k}", list(range(100, 110 + k)), SamplingParams(
            max_tokens=40, temperature=1.0, seed=k, guided=spec, logprobs=2 if k == 4 else None,
            repetition_penalty=1.3 if k == 2 else 1.0, logit_bias={7: 5.0} if k == 3 else None)))
    out.append(EngineRequest("free", list(range(200, 212)), SamplingParams(max_tokens=40, temperature=1.0, seed=9)))
    return out


def _run(core: EngineCore, requests, on_step=None, got: dict[str, list] | None = None) -> dict[str, list]:
    got = {} if got is None else got
    for r in requests[:5]:
        core.add_request(r)
    step = 0
    while core.has_work():
        if step == 2:  # later arrivals: prefilled while the others decode
            for r in requests[5:]:
                core.add_request(r)
        core.step(lambda outs: [got.setdefault(o.request_id, []).append(o) for o in outs])
        step += 1
        if on_step is not None:
            on_step(core, step)
    return got


def _tokens(got):
    return {k: [t for o in v for t in o.token_ids] for k, v in got.items()}


def test_engine_samples_the_same_tokens_with_and_without_overlap(demo, monkeypatch):
    core = _core(demo, guided_pick_first=False)  # every guided row masked before sampling
    overlapped = _tokens(_run(core, _requests()))
    assert core._guided_masks.hits > 50 and core._guided_masks.picked == 0
    with monkeypatch.context() as m:  # serial: nothing started ahead
        m.setattr(GuidedMasks, "start", lambda self, cons, left, params=None: None)
        assert _tokens(_run(_core(demo, guided_pick_first=False), _requests())) == overlapped

    def sampler_mask(self, logits, index, constraints, remaining, rows):  # the sampler's own mask step
        for i, bias in zip(index, self.masks(constraints, remaining)):
            rows[i].allowed_mask = torch.from_numpy(bias == 0)
        return []

    with monkeypatch.context() as m:
        m.setattr(GuidedMasks, "apply", sampler_mask)
        assert _tokens(_run(_core(demo, guided_pick_first=False), _requests())) == overlapped
    assert any(len(v) > 3 for v in overlapped.values())


def test_cancelled_mid_overlap(demo):
    core = _core(demo)

    aborted = []

    def cancel(core, step):
        if step == 3:
            assert core._guided_masks._pending is not None  # masks of the next step are in flight
            aborted.append((core.abort("g1"), len(got.get("g1", []))))

    got: dict[str, list] = {}
    _run(core, _requests(), cancel, got)
    (out, seen), = aborted
    assert out.finish_reason == "abort" and len(got["g1"]) == seen  # nothing after the cancel
    for k in ("g0", "g4"):
        text = "".join(o.text for o in got[k])
        assert got[k][-1].finish_reason == "stop" and isinstance(json.loads(text), dict), text


def test_too_complex_for_llguidance_fails_one_request_not_the_engine(demo):
    core = _core(demo)
    many = GuidedSpec("choice", choices=tuple(f"item{i}" for i in range(3000)))  # past llguidance's row limit
    wide = GuidedSpec("json_schema", {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)}})
    for rid, spec in (("many", many), ("wide", wide), ("ok", SPECS[0][1])):
        core.add_request(EngineRequest(rid, list(range(100, 110)), SamplingParams(
            max_tokens=40, temperature=1.0, seed=1, guided=spec)))
    got: dict[str, list] = {}
    while core.has_work():
        core.step(lambda outs: [got.setdefault(getattr(o, "request_id"), []).append(o) for o in outs])
    (err,) = got["many"]
    assert isinstance(err, GuidedDecodingError) and err.param == "guided_choice" and "limit" in str(err)
    for rid in ("wide", "ok"):
        assert got[rid][-1].finish_reason == "stop"
        assert isinstance(json.loads("".join(o.text for o in got[rid])), dict)


def test_a_json_schema_llguidance_gives_up_on_is_finished_by_the_builtin_automaton(tok):
    wide = GuidedSpec("json_schema", {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)},
                                      "required": ["p0"]})
    failed_over = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        c = get_backend("llguidance").build(wide, tok)
        out: list[int] = []
        while not c.done and len(out) < 80:
            left = 80 - len(out)
            mask = compute_masks([c], [left])[0]
            t = int(rng.choice(np.flatnonzero(mask)))
            if recheck([c], [t], [left]):
                t = int(rng.choice(np.flatnonzero(c.exact_mask(left))))
            c.advance(t)
            out.append(t)
        failed_over += c.failed
        assert c.done and "p0" in json.loads(tok.decode(out))
    assert failed_over >= 2


def test_the_last_fraction_digit_is_never_a_trailing_zero(tok):
    # llguidance's bounded numbers have no trailing zero: "...0" at the shadow's digit cap could never close
    c = build_constraint(GuidedSpec("json_schema", {"type": "number"}), tok)
    byte = {d: tok.convert_tokens_to_ids(d) for d in "0123456789."}
    for ch in "0." + "1" * 14:
        c.advance(byte[ch])
    assert c.cost_after(byte["0"]) is None and c.cost_after(byte["5"]) is not None
