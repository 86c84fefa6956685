"""Guided-decoding mask cost at GLM-4's vocabulary size (151,552 tokens): builtin vs llguidance.

Builds a synthetic byte-level BPE tokenizer of that size (every token is a merge of two earlier
ones, like a trained BPE: ASCII words with and without a leading space, digits, punctuation runs,
CJK characters and their pairs, GLM-4's special tokens), then for each backend:

  * per-token mask time of one sequence, median over the states of a realistic JSON answer;
  * the step overhead of 16 guided sequences: masks of all 16 (``compute_masks``: llguidance does
    them in one parallel call) + applying them in ``sample()`` + the budget recheck, minus
    ``sample()`` of the same 16 rows without masks; reported in ms and as a share of a decode step
    (``--decode-step-ms``, default 25 ms: a 16-sequence decode step of GLM-4-9B in bf16 on one
    data-centre GPU; give your own measured figure).

  * with ``--engine`` (the default when the ``autoglm-demo-151k`` builder exists): the decode step of a
    real model at 151,552 tokens (``autoglm-demo-151k``, its own tokenizer; random weights) for 16
    sequences, unguided vs all 16 guided (llguidance) with the masks computed serially vs started
    ahead on the worker while the forward runs (:mod:`autoglm.engine.guided.overlap`), each in the
    engine's order (masks applied in place on the logits, ``sample()``, budget recheck, advance). The
    overheads are measured against the unguided step of the same rounds (rounds interleaved, medians).
    On a CPU the forward uses the same cores as llguidance's threads, so the benchmark also prints a
    *model* of a GPU machine: the mask time a forward of ``--gpu-forward-ms`` would not hide, plus the
    measured critical-path work (apply + recheck + advance).
    Two more modes pick first (sample unmasked, check the pick; :mod:`autoglm.engine.guided.overlap`):
    ``first-random`` on the random model's own logits (most structural picks refused: the worst case),
    ``first-model`` with ``--answer-boost`` added to the answer's next token (a model that writes this
    answer: the case picking first is for); each reports its picks, refusals and the guided work left
    on the engine thread (apply + check + redraws + advance), measured directly.

    .venv/bin/python benchmarks/guided_masks.py            # a few minutes on 2 loaded cores
    .venv/bin/python benchmarks/guided_masks.py --vocab 32000 --seqs 8 --no-engine
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
            "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>"]

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "city": {"type": "string", "pattern": "^[A-Z][a-z]+$"},
    "when": {"type": "string", "format": "date-time"},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    "score": {"type": "number"}},
    "required": ["name", "city", "when", "age", "tags", "score"], "additionalProperties": False}
ANSWER = json.dumps({"name": "Li Lei 李雷", "city": "Beijing", "when": "2024-05-01T12:30:00Z", "age": 31,
                     "tags": ["alpha", "beta test", "数据"], "score": 0.875}, ensure_ascii=False,
                    separators=(",", ":"))


def synthetic_tokenizer(vocab_size: int, seed: int = 0):
    """A PreTrainedTokenizerFast with exactly ``vocab_size`` tokens (specials included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to = {b: c for b, c in zip(range(256), _bytes_to_unicode())}
    vocab: dict[str, int] = {}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    merges: list[tuple[str, str]] = []
    target = vocab_size - len(SPECIALS)
    groups: dict[str, list[str]] = {"alpha": [byte_to[b] for b in b"abcdefghijklmnopqrstuvwxyz"],
                                    "Alpha": [byte_to[b] for b in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"],
                                    "digit": [byte_to[b] for b in b"0123456789"],
                                    "punct": [byte_to[b] for b in b'{}[]",:.-_/()=+*#@!?;<>\'\\ \n']}

    def add(a: str, b: str, group: str) -> None:
        t = a + b
        if t in vocab or len(vocab) >= target:
            return
        vocab[t] = len(vocab)
        merges.append((a, b))
        groups.setdefault(group, []).append(t)

    space = byte_to[0x20]
    for c in groups["alpha"] + groups["Alpha"]:
        add(space, c, "alpha")
    for _ in range(3000):  # CJK: 3-byte characters built byte by byte, then pairs
        ch = chr(rng.randint(0x4E00, 0x9FA5)).encode("utf-8")
        s = [byte_to[b] for b in ch]
        add(s[0], s[1], "cjk_part")
        add(s[0] + s[1], s[2], "cjk")
    while len(vocab) < target:
        r = rng.random()
        if r < 0.80:
            g = "alpha"
            a = rng.choice(groups["alpha"] if rng.random() < 0.95 else groups["Alpha"])
            b = rng.choice(groups["alpha"])
        elif r < 0.88:
            g, a, b = "digit", rng.choice(groups["digit"]), rng.choice(groups["digit"])
        elif r < 0.94:
            g, a = "punct", rng.choice(groups["punct"])
            b = rng.choice(groups["punct"] if rng.random() < 0.5 else groups["alpha"][:50])
        else:
            g, a, b = "cjk", rng.choice(groups["cjk"]), rng.choice(groups["cjk"])
        if len(a) + len(b) <= 24:
            add(a, b, g)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                 additional_special_tokens=SPECIALS[1:])
    assert len(hf) == vocab_size, len(hf)
    return hf


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def per_token(backend: str, tok, spec, ids: list[int], budget: int) -> list[float]:
    from autoglm.engine.guided import compute_masks, get_backend

    c = get_backend(backend).build(spec, tok)
    times = []
    for i, t in enumerate(ids):
        t0 = time.perf_counter()
        compute_masks([c], [budget - i])
        times.append(time.perf_counter() - t0)
        c.advance(t)
    return times


def step_overhead(backend: str, tok, spec, ids: list[int], seqs: int, budget: int) -> tuple[float, float]:
    """(median ms per step spent on masks + recheck + redraws, median ms of ``sample()`` itself)."""
    from autoglm.engine.guided import compute_masks, get_backend, recheck
    from autoglm.engine.io_struct import SamplingParams
    from autoglm.engine.sampling import RowState, sample

    v = len(tok)
    cons = [get_backend(backend).build(spec, tok) for _ in range(seqs)]
    rows = [RowState(SamplingParams(max_tokens=budget, temperature=1.0, seed=i), v, [1]) for i in range(seqs)]
    plain = [RowState(SamplingParams(max_tokens=budget, temperature=1.0, seed=i), v, [1]) for i in range(seqs)]
    for r in plain:  # the same sampling path, with a mask that costs nothing to compute
        r.allowed_mask = torch.ones(v, dtype=torch.bool)
    logits = torch.randn(seqs, v)
    guided_ms, plain_ms, mask_ms = [], [], []
    # sequences at different positions of the answer, as in a real batch
    offsets = [(k * 7) % max(1, len(ids) - 1) for k in range(seqs)]
    for j, c in enumerate(cons):
        for t in ids[:offsets[j]]:
            c.advance(t)
    refused = 0
    for step in range(min(20, len(ids) - max(offsets) - 1)):
        left = [budget - offsets[j] - step for j in range(seqs)]
        t0 = time.perf_counter()
        masks = compute_masks(cons, left)
        for r, m in zip(rows, masks):
            r.allowed_mask = torch.from_numpy(m)
        spent = time.perf_counter() - t0
        mask_ms.append(1000 * spent)
        res = sample(logits, rows)  # the sampler's own cost is the same with any mask: not counted
        t0 = time.perf_counter()
        again = recheck(cons, res.token_ids, left)
        for j in again:
            rows[j].allowed_mask = torch.from_numpy(cons[j].exact_mask(left[j]))
            res.token_ids[j] = sample(logits[j:j + 1], [rows[j]]).token_ids[0]
        refused += len(again)
        guided_ms.append(1000 * (spent + time.perf_counter() - t0))
        t0 = time.perf_counter()
        sample(logits, plain)
        plain_ms.append(1000 * (time.perf_counter() - t0))
        for j, c in enumerate(cons):  # follow the answer, not the random pick, so the states stay realistic
            c.advance(ids[offsets[j] + step])
    print(f"  ({backend}: masks of {seqs} seqs median {statistics.median(mask_ms):.2f} ms, min {min(mask_ms):.2f} ms; "
          f"{refused} of {seqs * len(guided_ms)} picks refused by the budget check and redrawn from the exact mask)")
    return statistics.median(guided_ms), statistics.median(plain_ms)


def _shape_tokenizer_and_model():
    """(tokenizer, model) of ``autoglm-demo-151k``, built into the default store on first use; None
    when this checkout has no real-shape demo models."""
    try:
        from autoglm.hub import demo_shapes  # noqa: F401
    except ImportError:
        return None
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoglm.config import default_store_dir
    from autoglm.hub.demo import ensure_demo_model

    path = Path(ensure_demo_model("autoglm-demo-151k", default_store_dir()))
    return AutoTokenizer.from_pretrained(str(path)), AutoModelForCausalLM.from_pretrained(str(path)).eval()


MODES = ("unguided", "serial", "overlap", "first-random", "first-model")


def engine_steps(tok, model, spec, ids: list[int], seqs: int, budget: int, rounds: int, steps: int,
                 boost: float) -> dict:
    """Median ms per decode step for each of ``MODES`` (see the module doc), and the parts of the
    guided ones: ``mask`` (computing the masks, serial mode), ``wait`` (what the forward did not hide,
    overlap mode), ``apply`` and ``check`` (recheck + advance); ``picked``/``refused`` per pick-first mode.
    The ``-model`` modes add ``boost`` to the answer's token in every row's logits (a model that writes
    this answer); ``unguided`` is timed both ways (``unguided`` and ``unguided-model``)."""
    from autoglm.engine.guided import get_backend
    from autoglm.engine.guided.overlap import GuidedMasks
    from autoglm.engine.io_struct import SamplingParams
    from autoglm.engine.runner import BatchRunner
    from autoglm.engine.sampling import RowState, sample

    v = len(tok)
    offsets = [(k * 7) % max(1, len(ids) - steps - 1) for k in range(seqs)]
    names = MODES + ("unguided-model", "mask", "wait", "apply", "check", "work-first-random", "work-first-model")
    times: dict[str, list[float]] = {k: [] for k in names}
    picks: dict[str, list[int]] = {m: [0, 0] for m in MODES}
    for _ in range(rounds):
        for mode in MODES + ("unguided-model",):
            runner = BatchRunner(model)
            keys = list(range(seqs))
            with torch.inference_mode():
                runner.prefill(keys, [[5 + k, 6, 7, 8] for k in keys])
            rows = [RowState(SamplingParams(max_tokens=budget, temperature=1.0, seed=k), v, [1]) for k in keys]
            guided = not mode.startswith("unguided")
            cons = [get_backend("llguidance").build(spec, tok) for _ in keys] if guided else []
            for c, off in zip(cons, offsets):
                for t in ids[:off]:
                    c.advance(t)
            gm = GuidedMasks(pick_first=mode.startswith("first"))
            params = [r.params for r in rows]
            left = [budget - off for off in offsets]
            ahead = mode in ("overlap", "first-random", "first-model")
            if ahead and cons:
                gm.start(cons, left, params)
            target = torch.arange(seqs)
            for step in range(steps):
                feed = [ids[off + step] for off in offsets]
                t0 = time.perf_counter()
                with torch.inference_mode():
                    logits = runner.decode(feed)
                    if mode.endswith("model"):  # the answer's next token is what the model wants
                        logits[target, torch.tensor([ids[off + step] for off in offsets])] += boost
                t1 = time.perf_counter()
                first: list[int] = []
                if cons:
                    w0 = gm.waited_s
                    first = gm.apply(logits, keys, cons, left, rows)
                    t2 = time.perf_counter()
                    if mode == "serial":
                        times["mask"].append(1000 * (t2 - t1))
                    elif mode == "overlap":
                        times["wait"].append(1000 * (gm.waited_s - w0))
                        times["apply"].append(1000 * (t2 - t1 - (gm.waited_s - w0)))
                    else:
                        work = t2 - t1
                res = sample(logits, rows)
                t3 = time.perf_counter()
                if cons:
                    gm.settle(logits, keys, cons, left, rows, res, first)
                    for j, c in enumerate(cons):  # follow the answer, so the states stay realistic
                        c.advance(ids[offsets[j] + step])
                        left[j] -= 1
                    if mode == "overlap":
                        times["check"].append(1000 * (time.perf_counter() - t3))
                    elif mode.startswith("first"):  # apply + settle (redraws included) + advance
                        times[f"work-{mode}"].append(1000 * (work + time.perf_counter() - t3))
                    if ahead:
                        gm.start(cons, left, params)
                times[mode].append(1000 * (time.perf_counter() - t0))
            if mode in picks:
                picks[mode][0] += gm.picked
                picks[mode][1] += gm.refused
            gm.close()
    out = {k: statistics.median(x) if x else 0.0 for k, x in times.items()}
    out["picks"] = picks
    return out


def report_engine(args, spec) -> None:
    got = _shape_tokenizer_and_model()
    if got is None:
        print("engine: autoglm-demo-151k is not in this checkout (autoglm.hub.demo_shapes); skipped")
        return
    tok, model = got
    ids = tok.encode(ANSWER, add_special_tokens=False)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    per_token("llguidance", tok, spec, ids[:1], 400)  # warm: llguidance's tokenizer
    mask_one = sorted(1000 * t for t in per_token("llguidance", tok, spec, ids, 400))
    m = engine_steps(tok, model, spec, ids, args.seqs, 400, args.rounds, min(20, len(ids) // 2), args.answer_boost)
    base = m["unguided"]
    print(f"engine, autoglm-demo-151k ({len(tok)} tokens, random weights), {args.seqs} seqs, temperature 1, "
          f"medians over {args.rounds} interleaved rounds:")
    print(f"  per-token llguidance mask (1 seq): median {statistics.median(mask_one):.2f} ms")
    print(f"  unguided decode step (forward + sample): {base:.1f} ms; with the answer boosted: {m['unguided-model']:.1f} ms")
    what = {"serial": "masks first, serial", "overlap": "masks first, ahead",
            "first-random": "pick first, random model", "first-model": "pick first, model writes the answer"}
    for mode, label in what.items():
        ref = m["unguided-model"] if mode.endswith("model") else base
        extra = ""
        if mode.startswith("first"):
            picked, refused = m["picks"][mode]
            extra = (f"; {picked} picks made unmasked, {refused} refused and redrawn ({100 * refused / max(1, picked):.0f} %); "
                     f"guided work on the engine thread {m['work-' + mode]:.2f} ms = {100 * m['work-' + mode] / ref:.1f} %")
        print(f"  guided, {label:>36}: step {m[mode]:.1f} ms, overhead {m[mode] - ref:+.2f} ms "
              f"= {100 * (m[mode] - ref) / ref:+.1f} % (measured{extra})")
    print(f"    parts: masks of {args.seqs} seqs {m['mask']:.2f} ms (serial); ahead: wait {m['wait']:.2f} ms, "
          f"apply in place {m['apply']:.2f} ms, recheck + advance {m['check']:.2f} ms")
    n = args.gpu_forward_ms
    left = max(0.0, m["mask"] - n) + m["apply"] + m["check"]
    print(f"  MODEL (not measured), masks first: forward on a GPU taking {n:g} ms -> masks hidden except "
          f"{max(0.0, m['mask'] - n):.2f} ms; critical path left {left:.2f} ms = {100 * left / args.decode_step_ms:.1f} % "
          f"of a {args.decode_step_ms:g} ms step (apply would be a GPU kernel there: an upper bound)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=151_552)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--decode-step-ms", type=float, default=25.0)
    ap.add_argument("--backends", default="builtin,llguidance")
    ap.add_argument("--engine", action=argparse.BooleanOptionalAction, default=True,
                    help="also time decode steps of autoglm-demo-151k with serial and overlapped masks")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--answer-boost", type=float, default=20.0,
                    help="logit added to the answer's token in the 'model writes the answer' mode")
    ap.add_argument("--gpu-forward-ms", type=float, default=20.0,
                    help="forward time of the modelled GPU machine (what the overlap can hide)")
    args = ap.parse_args()
    from autoglm.engine.io_struct import GuidedSpec

    t0 = time.perf_counter()
    tok = synthetic_tokenizer(args.vocab)
    print(f"synthetic byte-level BPE: {len(tok)} tokens, built in {time.perf_counter() - t0:.1f} s")
    spec = GuidedSpec("json_schema", SCHEMA)
    ids = tok.encode(ANSWER, add_special_tokens=False)
    print(f"answer: {len(ids)} tokens")
    budget = 400
    for name in args.backends.split(","):
        t0 = time.perf_counter()
        per_token(name, tok, spec, ids[:1], budget)  # warm: vocabulary index / llguidance tokenizer
        warm = time.perf_counter() - t0
        times = per_token(name, tok, spec, ids, budget)
        ms = sorted(1000 * t for t in times)
        over, sampler = step_overhead(name, tok, spec, ids, args.seqs, budget)
        print(f"{name:>10}: per-token mask median {statistics.median(ms):.2f} ms, p90 {ms[int(0.9 * len(ms))]:.2f} ms, "
              f"max {ms[-1]:.2f} ms (first use {warm:.1f} s) | {args.seqs} seqs: guided overhead {over:.2f} ms "
              f"per step = {100 * over / args.decode_step_ms:.1f} % of a {args.decode_step_ms:g} ms decode step "
              f"(sample() itself: {sampler:.1f} ms)")
    if args.engine and args.vocab == 151_552:
        report_engine(args, spec)


if __name__ == "__main__":
    main()
