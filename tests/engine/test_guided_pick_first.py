"""Guided rows sampled unmasked, the pick checked after (:mod:`autoglm.engine.guided.overlap`).

Picking first must sample what masking first samples: the constraint's own check of one token agrees
with its exact mask over random states; greedy decoding gives the same tokens either way (penalties,
``logit_bias`` and logprobs included); temperature sampling draws from the masked distribution (an
empirical distribution over thousands of seeded draws against the exact masked softmax); rows whose
sampling truncates (``top_k`` / ``top_p`` / ``min_p``) are always masked first; a sequence whose picks
keep being refused is masked ahead for 1, 2, 4 … 16 steps, and accepted picks undo refusals one each.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("llguidance")

from autoglm.engine.core import EngineCore  # noqa: E402
from autoglm.engine.guided import get_backend  # noqa: E402
from autoglm.engine.guided.overlap import MAX_BACKOFF, GuidedMasks, pick_first_exact  # noqa: E402
from autoglm.engine.io_struct import EngineRequest, GuidedSpec, SamplingParams  # noqa: E402
from autoglm.engine.runner import BatchRunner  # noqa: E402
from autoglm.engine.sampling import RowState, sample  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
    "n": {"type": "integer", "minimum": 0, "maximum": 500},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}},
    "required": ["name", "code", "n"], "additionalProperties": False}
SPECS = [GuidedSpec("json_schema", SCHEMA), GuidedSpec("json_object"),
         GuidedSpec("regex", regex=r"[a-z]{2,6}-[0-9]{1,3}"), GuidedSpec("choice", choices=("red", "green", "blue"))]


@pytest.fixture(scope="module")
def tok(demo):
    return demo[1]


def _core(demo, **kw) -> EngineCore:
    model, tok = demo
    return EngineCore(BatchRunner(model), tok, max_model_len=512, eos_token_ids=[tok.eos_token_id],
                      guided_backend="llguidance", **kw)


def _run(core: EngineCore, requests) -> dict[str, list[int]]:
    got: dict[str, list] = {}
    for r in requests:
        core.add_request(r)
    while core.has_work():
        core.step(lambda outs: [got.setdefault(o.request_id, []).append(o) for o in outs])
    return {k: [t for o in v for t in o.token_ids] for k, v in got.items()}


def test_allows_agrees_with_the_exact_mask_over_random_states(tok):
    rng = np.random.default_rng(0)
    special = [tok.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>") if t in tok.get_vocab()]
    checked = 0
    for k in range(24):
        spec = SPECS[k % len(SPECS)]
        c = get_backend("llguidance").build(spec, tok)
        left = 40
        while not c.done and left > 0:
            exact = c.exact_mask(left)
            allowed, refused = np.flatnonzero(exact), np.flatnonzero(~exact)
            picks = list(rng.choice(allowed, min(6, len(allowed)), replace=False))
            picks += list(rng.choice(refused, min(20, len(refused)), replace=False)) + special + [tok.eos_token_id]
            for t in picks:
                assert c.allows(int(t), left) == bool(exact[t]), (spec.kind, t, tok.decode([int(t)]))
                checked += 1
            c.advance(int(rng.choice(allowed)))
            left -= 1
    assert checked > 2000


def _requests(**params):
    return [EngineRequest(f"g{k}", list(range(100, 110 + k)), SamplingParams(
        max_tokens=40, guided=spec, logprobs=2 if k == 1 else None, repetition_penalty=1.3 if k == 2 else 1.0,
        logit_bias={7: 5.0} if k == 3 else None, **params)) for k, spec in enumerate(SPECS + SPECS[:2])]


def test_greedy_tokens_are_the_same_picked_first_or_masked_first(demo):
    first = _core(demo)
    picked = _run(first, _requests(temperature=0.0))
    masked = _run(_core(demo, guided_pick_first=False), _requests(temperature=0.0))
    assert picked == masked and any(len(v) > 5 for v in picked.values())
    gm = first._guided_masks
    assert gm.picked > 20 and gm.refused > 0  # a random model: some picks are refused, and drawn again
    assert json.loads(first.tokenizer.decode(picked["g0"]))["code"]  # the schema still holds


def test_temperature_draws_follow_the_masked_distribution(tok):
    torch.manual_seed(0)
    logits = torch.randn(1, len(tok)) * 3
    c = get_backend("llguidance").build(SPECS[0], tok)
    for t in tok.encode('{"name":"', add_special_tokens=False):  # a free string: most tokens allowed
        c.advance(t)
    left = 30
    exact = torch.from_numpy(c.exact_mask(left))
    logits[0, torch.nonzero(~exact).flatten()[:10]] += 9.0  # a model that often wants a refused token (a quote, EOS)
    want = torch.softmax(logits[0].masked_fill(~exact, float("-inf")), -1)
    top = torch.topk(want, 8).indices  # the likeliest allowed tokens
    refused_mass = float(torch.softmax(logits[0], -1)[~exact].sum())
    assert 0.05 < refused_mass < 0.95  # both branches (kept pick, redraw) matter for this distribution
    n, counts, redrawn = 4000, torch.zeros(len(tok)), 0
    for seed in range(n):
        gm = GuidedMasks()
        row = RowState(SamplingParams(max_tokens=left, temperature=1.0, seed=seed), len(tok), [1])
        x = logits.clone()
        assert gm.apply(x, [0], [c], [left], [row]) == [0]  # unmasked
        res = sample(x, [row])
        redrawn += len(gm.settle(x, [0], [c], [left], [row], res, [0]))
        t = res.token_ids[0]
        assert exact[t]
        counts[t] += 1
    assert 0.5 * refused_mass * n < redrawn < 1.5 * refused_mass * n
    freq = counts / n
    assert float(want[top].sum()) > 0.3
    for t in top:  # each of the likeliest allowed tokens, and the rest together, within 4 standard errors
        assert abs(float(freq[t] - want[t])) < 4 * (float(want[t]) / n) ** 0.5 + 0.002, (int(t), freq[t], want[t])
    rest = 1 - float(want[top].sum())
    assert abs(1 - float(freq[top].sum()) - rest) < 4 * (rest / n) ** 0.5 + 0.002


@pytest.mark.parametrize("params", [dict(temperature=1.0, top_p=0.9), dict(temperature=0.8, top_k=20),
                                    dict(temperature=1.0, min_p=0.05)])
def test_truncating_samplers_are_masked_first(demo, params):
    assert not pick_first_exact(SamplingParams(**params))
    core = _core(demo)
    out = _run(core, _requests(seed=3, **params))
    assert core._guided_masks.picked == 0 and core._guided_masks.hits > 20
    assert all(out.values())


def test_exact_samplers_pick_first():
    for params in (dict(temperature=0.0), dict(temperature=0.7), dict(temperature=1.3, top_k=1),
                   dict(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0)):
        assert pick_first_exact(SamplingParams(**params)), params


def test_a_sequence_refused_again_and_again_backs_off_and_an_accepted_pick_resets_it(tok):
    gm = GuidedMasks()
    c = get_backend("llguidance").build(GuidedSpec("choice", choices=("red", "green")), tok)
    row = RowState(SamplingParams(max_tokens=20, temperature=1.0, seed=0), len(tok), [1])
    bad = tok.encode("zzz", add_special_tokens=False)[0]
    good = tok.encode("red", add_special_tokens=False)[0]
    assert c.allows(good, 20) and not c.allows(bad, 20)
    logits = torch.zeros(1, len(tok))
    logits[0, bad] = 50.0  # a model that always wants a refused token
    schedule = []
    for _ in range(60):
        x = logits.clone()
        first = gm.apply(x, [0], [c], [20], [row])
        schedule.append(bool(first))
        res = sample(x, [row])
        assert gm.settle(x, [0], [c], [20], [row], res, first) == ([0] if first else [])
        assert res.token_ids[0] != bad and c.allows(res.token_ids[0], 20)
    gaps, run = [], 0
    for picked in schedule:
        if picked:
            gaps.append(run)
            run = 0
        else:
            run += 1
    assert gaps[:7] == [0, 1, 2, 4, 8, 16, 16] and max(gaps) == MAX_BACKOFF
    refusals = sum(schedule)
    logits[0, bad], logits[0, good] = 0.0, 50.0  # now the model wants an allowed token
    accepted = 0
    for _ in range(refusals * 17):
        first = gm.apply(x := logits.clone(), [0], [c], [20], [row])
        res = sample(x, [row])
        assert gm.settle(x, [0], [c], [20], [row], res, first) == [] and res.token_ids[0] == good
        accepted += bool(first)
        if accepted == refusals:
            break
    assert accepted == refusals  # each accepted pick undoes one refusal: then it picks first every step
    assert all(gm.apply(logits.clone(), [0], [c], [20], [row]) == [0] for _ in range(3))


def test_pick_first_off_masks_every_row(demo):
    core = _core(demo, guided_pick_first=False)
    _run(core, _requests(temperature=0.0)[:2])
    assert core._guided_masks.picked == 0 and core._guided_masks.hits + core._guided_masks.misses > 10


def test_outputs_follow_the_schema_over_seeds_picked_first(demo):
    core = _core(demo)
    reqs = [EngineRequest(f"s{k}", list(range(120, 126 + k)), SamplingParams(
        max_tokens=60, temperature=1.0, seed=k, guided=SPECS[0])) for k in range(6)]
    out = _run(core, reqs)
    for k, ids in out.items():
        value = json.loads(core.tokenizer.decode(ids))
        assert set(value) >= {"name", "code", "n"} and 0 <= value["n"] <= 500, value
        assert len(value["code"]) == 4 and value["code"][:2].isupper() and value["code"][2:].isdigit()
    assert core._guided_masks.picked > 0 and core._guided_masks.refused > 0
