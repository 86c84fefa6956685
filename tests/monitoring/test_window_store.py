"""Windows in the state store: several processes (here: monitors with connections of their own) share one
store, each window is evaluated once, and every process reports the same values. SQLite and PostgreSQL."""
from __future__ import annotations

import json
import time

import pytest

from autoglm.cli.main import main
from autoglm.gateway.store import open_store
from autoglm.monitoring.quality import quality_of
from autoglm.monitoring.served import ServedMonitor
from autoglm.monitoring.settings import MonitorSettings
from autoglm.monitoring.window_store import WindowStore, served_drift_rate
from tests.services import fresh_pg_database

W = 60  # window seconds
SETTINGS = MonitorSettings(window=W, flush_interval=5, reference_windows=1, min_requests=4, min_labels=4)
ENGLISH = ["Hello there, how are you today?", "What is the weather like in Paris?"]
CHINESE = "请详细解释一下机器学习中的梯度下降算法以及它的各种变体。" * 6


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    with fresh_pg_database("autoglm_mon") as url:
        yield url


@pytest.fixture()
def pair(store_url):
    """Two monitors, as two server processes would have: one store URL, a connection each."""
    stores = [open_store(store_url), open_store(store_url)]
    monitors = [ServedMonitor(SETTINGS, s, models=["m"]) for s in stores]
    yield monitors
    for s in stores:
        s.close()


def body(text: str) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()


def response(content: str = "Fine, thanks.", prompt_tokens: int = 12, rid: str = "chatcmpl-1") -> dict:
    return {"id": rid, "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 4}}


def serve(monitors, at: float, texts: list[str], tokens: int = 12) -> None:
    """Serve ``texts`` spread over ``monitors`` at ``at``; then, as the background tasks do every
    flush_interval, each monitor writes its counts once the window is over (before the grace ends)."""
    for i, text in enumerate(texts):
        monitors[i % len(monitors)].submit("-", body(text), response(prompt_tokens=tokens), at=at + i * 0.01)
    end = (int(at) // W + 1) * W
    for m in monitors:
        m.tick(end + 1, force=True)


def tick_all(monitors, now: float) -> None:
    for m in monitors:
        m.tick(now, force=True)


T0 = (int(time.time()) // W) * W - 10 * W  # window-aligned, in the past


def test_two_processes_evaluate_each_window_once_and_report_the_same_drift(pair):
    a, b = pair
    serve(pair, T0 + 1, ENGLISH * 5)  # window 0: the reference
    tick_all(pair, T0 + 5)  # both write partial counts, nothing is over yet
    ws = a.window_store()
    assert [(m, k) for m, _, k in ws.pending()] == [("m", 2)]
    assert ws.windows() == []
    serve(pair, T0 + W + 1, ENGLISH * 4)  # window 1: the same mix
    serve(pair, T0 + 2 * W + 1, [CHINESE] * 6, tokens=400)  # window 2: drifted
    tick_all(pair, T0 + 3 * W + SETTINGS.grace)
    tick_all(pair, T0 + 3 * W + SETTINGS.grace + 1)  # evaluation is idempotent: nothing is evaluated twice

    rows = ws.windows(model="m")
    assert [(r.window_start - T0, r.state, r.n, r.instances) for r in rows] == [
        (0, "reference", 10, 2), (W, "quiet", 8, 2), (2 * W, "fired", 6, 2)]
    assert ws.pending() == []
    assert {"language", "prompt_tokens", "tokens"} <= {k for k, v in rows[2].drift.items() if v["fired"]}
    assert rows[1].max_psi < 0.05
    rate = ws.drift_rate(model="m", since=T0)
    assert (rate.rate, rate.tested, rate.fired) == (0.5, 2, 1)
    assert a.snapshot["m"].to_dict() == b.snapshot["m"].to_dict()
    assert a.snapshot["m"].drift_rate == 0.5 and a.snapshot["m"].reference == "ready"
    assert a.snapshot["m"].psi["language"] > 1


def test_a_flush_rewrites_this_process_row_and_late_counts_are_dropped(pair):
    a, b = pair
    serve([a], T0 + 1, ENGLISH * 3)
    a.tick(T0 + 2, force=True)
    a.tick(T0 + 3, force=True)  # nothing new: the row is not written twice
    serve([a], T0 + 4, ENGLISH)
    a.tick(T0 + 5, force=True)
    ws = a.window_store()
    assert ws.pending() == [("m", T0, 1)]
    tick_all(pair, T0 + W + SETTINGS.grace)
    assert [r.n for r in ws.windows()] == [8]
    serve([b], T0 + 30, ENGLISH * 3)  # b was stalled: its counts of window 0 arrive after the evaluation
    b.tick(T0 + W + SETTINGS.grace + 2, force=True)
    assert [r.n for r in ws.windows()] == [8] and ws.pending() == []


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # the backend is not the point here
def test_pinning_and_resetting_the_reference(pair):
    a, _ = pair
    ws = a.window_store()
    serve(pair, T0 + 1, ENGLISH * 4)
    serve(pair, T0 + W + 1, [CHINESE] * 4, tokens=400)
    tick_all(pair, T0 + 2 * W + SETTINGS.grace)
    assert [r.state for r in ws.windows()] == ["reference", "fired"]

    ref = ws.pin_reference("m", since=T0 + W, until=T0 + 2 * W)  # the Chinese traffic is the new normal
    assert (ref.source, ref.complete, ref.windows, ref.n) == ("pinned", True, 1, 4)
    serve(pair, T0 + 2 * W + 1, [CHINESE] * 4, tokens=400)
    tick_all(pair, T0 + 3 * W + SETTINGS.grace)
    assert ws.windows()[-1].state == "quiet"

    assert ws.reset_reference("m") == 1
    serve(pair, T0 + 3 * W + 1, ENGLISH * 4)
    tick_all(pair, T0 + 4 * W + SETTINGS.grace)
    assert ws.windows()[-1].state == "reference" and ws.reference("m").source == "auto"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # the backend is not the point here
def test_a_window_with_too_few_requests_is_not_tested(pair):
    ws = pair[0].window_store()
    serve(pair, T0 + 1, ENGLISH * 4)
    serve(pair, T0 + W + 1, [CHINESE] * 2, tokens=400)  # min_requests is 4
    tick_all(pair, T0 + 2 * W + SETTINGS.grace)
    assert [r.state for r in ws.windows()] == ["reference", "insufficient"]
    assert ws.drift_rate(since=T0).tested == 0 and pair[0].snapshot["m"].drift_rate == 0.0


def test_auc_from_labels_agreeing_and_flipped(store_url):
    with open_store(store_url) as store:
        ws = WindowStore(store)
        for i in range(10):
            score = i / 10
            ws.add_labelled(f"a{i}", "agree", "-", score, int(score >= 0.5))
            ws.add_labelled(f"f{i}", "flipped", "-", score, int(score < 0.5))
        ws.add_labelled("t0", "thin", "-", 0.9, 1)
        ws.add_labelled("t1", "thin", "-", 0.1, 0)
        q = quality_of(ws, store, time.time() - 3600, min_labels=4)
        assert q["agree"].auc == 1.0 and q["flipped"].auc == 0.0
        assert q["thin"].auc is None and q["thin"].labels == 2  # fewer than min_labels
        assert quality_of(ws, store, time.time() + 60, min_labels=4) == {}  # outside the quality window


def test_the_drift_trigger_fires_on_the_served_drift_rate(pair):
    from autoglm.feedback.store import FeedbackStore
    from autoglm.loop.schema import DriftTrigger as DriftConfig
    from autoglm.loop.triggers import TriggerContext, create_trigger

    a, _ = pair
    fs = FeedbackStore(a._store)
    trigger = create_trigger(DriftConfig(type="drift", served_rate=0.4, served_window=10 * W))
    assert served_drift_rate(a._store).tested == 0  # the monitor never ran here: nothing, and nothing written
    serve(pair, T0 + 1, ENGLISH * 4)
    serve(pair, T0 + W + 1, ENGLISH * 4)
    tick_all(pair, T0 + 2 * W + SETTINGS.grace)
    ctx = TriggerContext(now=T0 + 3 * W, feedback=fs)
    assert trigger.check(ctx) is None  # one quiet window: rate 0
    serve(pair, T0 + 2 * W + 1, [CHINESE] * 4, tokens=400)
    tick_all(pair, T0 + 3 * W + SETTINGS.grace)
    fired = trigger.check(TriggerContext(now=T0 + 4 * W, feedback=fs))
    assert fired is not None and fired.data == {"drift_rate": 0.5, "fired": 1, "tested": 2}
    # windows before the last cycle do not count again
    assert trigger.check(TriggerContext(now=T0 + 4 * W, feedback=fs, last_cycle_at=T0 + 3 * W)) is None


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # the backend is not the point here
def test_cli_status_pin_and_reset(pair, store_url, capsys):
    serve(pair, T0 + 1, ENGLISH * 4)
    serve(pair, T0 + W + 1, [CHINESE] * 4, tokens=400)
    tick_all(pair, T0 + 2 * W + SETTINGS.grace)
    since = str(T0 - 1)
    assert main(["monitor", "--store", store_url, "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report[0]["model"] == "m" and [w["state"] for w in report[0]["windows"]] == ["reference", "fired"]
    assert main(["monitor", "--store", store_url, "status"]) == 0
    out = capsys.readouterr().out
    assert "fired" in out and "drifted: prompt_tokens, language, tokens" in out
    assert main(["monitor", "--store", store_url, "pin", "--model", "m", "--since", since]) == 0
    assert "2 window(s), 12 request(s)" in capsys.readouterr().out
    assert main(["monitor", "--store", store_url, "pin", "--model", "nope", "--since", since]) == 2
    assert "no evaluated windows of model 'nope'" in capsys.readouterr().err
    assert main(["monitor", "--store", store_url, "reset"]) == 0
    assert "forgot 1 reference(s)" in capsys.readouterr().out
