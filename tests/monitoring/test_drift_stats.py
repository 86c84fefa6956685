"""The monitor's pure parts: binning an exchange, the drift test, AUC."""
from __future__ import annotations

import json
import random

import pytest

from autoglm.monitoring.drift import DriftThresholds, chi2_sf, compare
from autoglm.monitoring.quality import auc
from autoglm.monitoring.signals import SIGNALS, Counts, extract_score, is_refusal, language_of, observe


def chat(text: str) -> dict:
    return {"model": "m", "messages": [{"role": "system", "content": "You are helpful."},
                                       {"role": "user", "content": text}]}


def answer(content: str | None, *, finish: str = "stop", prompt_tokens: int = 12, completion_tokens: int = 5,
           tool_calls: list | None = None) -> dict:
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}


def bins(obs, signal: str) -> dict[str, int]:
    labels = SIGNALS[signal]
    out: dict[str, int] = {}
    for s, i, n in obs.items:
        if s == signal:
            out[labels[i]] = out.get(labels[i], 0) + n
    return out


def test_language_of_names_the_dominant_script():
    assert language_of("Hello there, how are you today?") == "latin"
    assert language_of("请详细解释一下机器学习中的梯度下降算法") == "zh"
    assert language_of("こんにちは、世界") == "ja"  # kana (with kanji) is Japanese
    assert language_of("안녕하세요 여러분") == "ko"
    assert language_of("Привет, как дела?") == "cyrillic"
    assert language_of("12345 !!!") == "none"
    assert language_of("Καλημέρα κόσμε") == "other"


def test_refusals_and_scores_are_recognised_and_plain_answers_are_not():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("抱歉，我无法回答这个问题。")
    assert is_refusal("As an AI language model, I cannot")
    assert not is_refusal("Sure! Here is the answer.")
    assert not is_refusal("The sorry state of affairs")
    assert extract_score("0.73") == 0.73
    assert extract_score('{"score": 0.2, "label": "spam"}') == 0.2
    assert extract_score('{"probability": 1}') == 1.0
    assert extract_score("The score is 0.7") is None
    assert extract_score("true") is None
    assert extract_score('{"label": "spam"}') is None


def test_observe_bins_inputs_and_outputs_without_keeping_text():
    obs = observe(chat("Hello there, how are you?"), answer("Fine, thanks.", prompt_tokens=20))
    assert bins(obs, "prompt_tokens") == {"16-31": 1}
    assert bins(obs, "language") == {"latin": 1}  # the system prompt is not the user's text
    assert sum(bins(obs, "tokens").values()) == 5  # hello there how are you
    assert bins(obs, "answer") == {"text": 1} and bins(obs, "finish_reason") == {"stop": 1}
    assert "json_valid" not in {s for s, _, _ in obs.items}  # JSON was not asked for
    text = json.dumps(obs.items)
    assert "Hello" not in text and "Fine" not in text

    empty = observe(chat("hi"), answer("  ", finish="length"))
    assert bins(empty, "answer") == {"empty": 1} and bins(empty, "finish_reason") == {"length": 1}
    refused = observe(chat("hi"), answer("I cannot do that."))
    assert bins(refused, "answer") == {"refusal": 1}
    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    tool = observe(chat("weather?"), answer(None, finish="tool_calls", tool_calls=call))
    assert bins(tool, "answer") == {"tool_call": 1} and bins(tool, "finish_reason") == {"tool_calls": 1}
    json_req = {**chat("give json"), "response_format": {"type": "json_object"}}
    assert bins(observe(json_req, answer('{"a": 1}')), "json_valid") == {"valid": 1}
    assert bins(observe(json_req, answer('{"a": ')), "json_valid") == {"invalid": 1}
    completion = {"id": "cmpl-1", "object": "text_completion", "model": "m",
                  "choices": [{"index": 0, "text": "0.9", "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    scored = observe({"prompt": "Is this spam?"}, completion)
    assert scored.score == 0.9 and bins(scored, "language") == {"latin": 1}


def test_token_buckets_are_the_same_in_every_process():
    import subprocess
    import sys

    code = ("from autoglm.monitoring.signals import _token_buckets;"
            "print(sorted(_token_buckets('Hello world, 你好世界 hello').items()))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")}
    assert len(runs) == 1 and runs.pop().strip() != "[]"


def window_of(texts: list[str], tokens: int = 12) -> Counts:
    c = Counts()
    for t in texts:
        c.add(observe(chat(t), answer("ok", prompt_tokens=tokens)))
    return c


ENGLISH = ["Hello there, how are you today?", "What is the weather like in Paris?"]
CHINESE = ["请详细解释一下机器学习中的梯度下降算法以及它的各种变体。" * 6]


def test_an_unchanged_mix_does_not_fire_and_a_changed_one_does():
    reference = window_of(ENGLISH * 20)
    same = compare(window_of(ENGLISH * 5), reference)
    assert not same.fired and same.max_psi < 0.05
    shifted = compare(window_of(CHINESE * 20, tokens=400), reference)
    assert shifted.fired
    assert {"prompt_tokens", "language", "tokens"} <= set(shifted.fired_signals())
    assert "answer" not in shifted.fired_signals()  # the answers did not change
    assert shifted.signals["language"].psi > 1 and shifted.signals["language"].kl > 0.5


def test_output_drift_fires_on_its_own_signal():
    reference = Counts()
    window = Counts()
    for i in range(40):
        reference.add(observe(chat(ENGLISH[i % 2]), answer("A fine answer.")))
        window.add(observe(chat(ENGLISH[i % 2]), answer("I'm sorry, I can't help with that." if i % 2 else "")))
    result = compare(window, reference)
    assert result.fired and result.fired_signals() == ["answer"]


def test_a_small_noisy_window_does_not_fire_on_noise():
    """Same distribution, 8 requests: PSI may be large by chance, but the chi-square test says it is noise."""
    rng = random.Random(0)
    lengths = [10, 20, 40, 80, 160, 320]
    reference = Counts()
    for _ in range(400):
        reference.add(observe(chat("hi"), answer("ok", prompt_tokens=rng.choice(lengths))))
    fired = 0
    for _ in range(50):
        window = Counts()
        for _ in range(8):
            window.add(observe(chat("hi"), answer("ok", prompt_tokens=rng.choice(lengths))))
        fired += compare(window, reference, DriftThresholds(min_count=8)).fired
    assert fired <= 2


def test_min_count_leaves_thin_signals_untested():
    result = compare(window_of(ENGLISH * 2), window_of(ENGLISH * 20), DriftThresholds(min_count=20))
    assert "language" not in result.signals and not result.fired


@pytest.mark.parametrize("x,dof,expected", [(3.841458820694124, 1, 0.05), (18.307038053275146, 10, 0.05),
                                            (0.0, 3, 1.0), (100.0, 30, 1.8568e-09)])
def test_chi2_survival_function_matches_tables(x, dof, expected):
    assert chi2_sf(x, dof) == pytest.approx(expected, rel=1e-3)


def test_auc_from_labels_that_agree_flip_or_tie():
    scores = [i / 20 for i in range(20)]
    agree = [(s, int(s >= 0.5)) for s in scores]
    flipped = [(s, 1 - y) for s, y in agree]
    assert auc(agree) == 1.0
    assert auc(flipped) == 0.0
    assert auc([(0.5, 1), (0.5, 0)]) == 0.5
    assert auc([(0.1, 1), (0.2, 1)]) is None  # one class only
    rng = random.Random(1)
    noisy = [(s, y if rng.random() < 0.8 else 1 - y) for s, y in agree * 20]
    assert 0.6 < auc(noisy) < 0.95


def test_an_unread_request_still_counts_its_output_and_length():
    obs = observe(None, answer("Fine.", prompt_tokens=5000))
    signals = {s for s, _, _ in obs.items}
    assert signals == {"prompt_tokens", "completion_tokens", "finish_reason", "answer"}
    assert bins(obs, "prompt_tokens") == {"4096-8191": 1}
