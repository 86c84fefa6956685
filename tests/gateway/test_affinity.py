"""Prefix affinity: turns of one conversation meet on one replica, within a load bound."""
from __future__ import annotations

from dataclasses import dataclass

from autoglm.api.schemas import ChatCompletionRequest, CompletionRequest
from autoglm.gateway.affinity import AffinitySettings, PrefixAffinity, block_hashes, request_text


@dataclass(eq=False)
class Replica:
    name: str
    outstanding: int = 0
    served: int = 0


SYSTEM = "You are a careful assistant for a logistics company. " * 8  # several blocks long


def chat(*turns: str) -> ChatCompletionRequest:
    messages = [{"role": "system", "content": SYSTEM}]
    for i, t in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return ChatCompletionRequest(model="m", messages=messages)


def serve(policy: PrefixAffinity, replicas: list[Replica], body) -> Replica:
    r = policy.choose(replicas, policy.hashes(request_text(body)))
    r.served += 1
    return r


def test_every_turn_of_a_conversation_goes_where_it_started():
    replicas = [Replica("a"), Replica("b"), Replica("c")]
    policy = PrefixAffinity()
    first = serve(policy, replicas, chat("Where is parcel 1?"))
    for n in range(2, 6):  # later turns resend the history; others' traffic in between
        serve(policy, replicas, CompletionRequest(model="m", prompt=f"unrelated prompt {n} " * 20))
        turns = ["Where is parcel 1?"] + [f"answer {i}" if i % 2 else f"question {i}" for i in range(1, n)]
        assert serve(policy, replicas, chat(*turns)) is first
    assert policy.stats()["affine"] >= 4


def test_without_history_it_is_least_outstanding():
    replicas = [Replica("a", outstanding=3), Replica("b", outstanding=1), Replica("c", outstanding=2)]
    policy = PrefixAffinity()
    assert policy.choose(replicas, []).name == "b"
    assert policy.choose(replicas, policy.hashes("short")).name == "b"  # shorter than one block: no prefix
    assert policy.stats()["affine"] == 0


def test_a_busy_owner_spills_to_the_least_loaded():
    a, b = Replica("a"), Replica("b")
    policy = PrefixAffinity(AffinitySettings(load_slack=2, load_factor=0.5))
    body = chat("hello there")
    assert serve(policy, [a, b], body) is a
    a.outstanding = 2  # within min (0) + slack 2: still affine
    assert serve(policy, [a, b], body) is a
    a.outstanding = 3  # beyond the bound: spill
    assert serve(policy, [a, b], body) is b
    assert policy.stats()["spilled"] == 1
    a.outstanding = 0  # the prefix now lives on b too; b is the latest owner
    assert serve(policy, [a, b], body) is b


def test_prefix_hashes_are_chained_and_bounded():
    text = "x" * 128 * 3 + "tail"
    h = block_hashes(text, 128, 64)
    assert len(h) == 3 and len(set(h)) == 3  # same block text, different prefixes
    assert block_hashes("x" * 128 * 3 + "other", 128, 64) == h  # only whole blocks count
    assert block_hashes(text, 128, 2) == h[:2]
    policy = PrefixAffinity(AffinitySettings(max_entries=5))
    policy.record(Replica("a"), list(range(10)))
    assert policy.stats()["prefixes"] == 5


def test_request_text_of_each_api():
    assert request_text(CompletionRequest(model="m", prompt="abc")) == "abc"
    assert request_text(CompletionRequest(model="m", prompt=[1, 2, 3])) is None
    text = request_text(chat("hi"))
    assert text.startswith("<system>You are") and text.endswith("<user>hi")
    assert request_text(object()) is None
