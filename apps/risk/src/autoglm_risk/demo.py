"""``autoglm-risk demo``: the whole application in one command.

1. generate users, cards, devices and transactions with labelled fraud (the last days kept as a live stream);
2. build the SQL features and train LightGBM with a search (autoglm's pipeline + ``autoglm tune``), calibrate,
   register in MLflow as ``risk@champion``;
3. start the decision service (a real ``autoglm-risk serve`` process, keyed with an autoglm gateway key);
4. replay the stream against ``POST /v1/risk/decide``, printing decisions as they come, with reasons;
5. act as a reviewer: claim and resolve some review cases (their labels go to autoglm's feedback store),
   and send the chargeback feed for the rest (``POST /v1/risk/labels``);
6. retrain through autoglm's loop on those labels (``POST /v1/risk/admin/retrain``);
7. stop the service, backtest the stream period (rules only / model only / both) and print a summary.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from autoglm.errors import AutoGLMError
from autoglm_risk.workdir import Workdir

__all__ = ["run_demo"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(wd: Workdir, key: str, port: int, log: Path) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "autoglm_risk", "serve", "--workdir", str(wd.root), "--port", str(port)]
    env = {**os.environ, "AUTOGLM_HOME": str(wd.home), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AutoGLMError(f"the decision service exited ({proc.returncode}); its log: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AutoGLMError(f"the decision service did not become healthy in 120 s; its log is {log}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _sample_stream(tx: Any, n: int, seed: int) -> Any:
    """Every fraud row of the stream period plus a random sample of legitimate ones, ``n`` rows in all, by time."""
    fraud = tx[tx.is_fraud == 1]
    legit = tx[tx.is_fraud == 0]
    keep = max(0, min(len(legit), n - len(fraud)))
    rng = np.random.default_rng(seed)
    picked = legit.iloc[np.sort(rng.choice(len(legit), keep, replace=False))] if keep else legit.iloc[:0]
    import pandas as pd

    return pd.concat([fraud.head(n), picked]).sort_values(["ts", "txn_id"]).reset_index(drop=True)


def run_demo(wd: Workdir, *, users: int = 3000, days: int = 35, stream_days: float = 2, seed: int = 7,
             fraud_rate: float = 2.0,
             trials: int = 6, estimators: int = 100, stream: int = 1500, reviews: int = 10, retrain: bool = True,
             retrain_trials: int | None = None, out: TextIO | None = None, show: int = 25) -> dict[str, Any]:
    import httpx
    import pandas as pd

    from autoglm.gateway import create_key, open_store
    from autoglm_risk.app import backtest_stored, generate_into, train_in
    from autoglm_risk.backtest import format_report

    out = out or sys.stdout
    say: Callable[[str], None] = lambda line: print(line, file=out, flush=True)  # noqa: E731
    t_all = time.monotonic()
    say(f"== 1. data: {users:,} users, {days} days (the last {stream_days:g} held out as the live stream), seed {seed}")
    meta = generate_into(wd, users=users, days=days, seed=seed, stream_days=stream_days, fraud_rate=fraud_rate,
                         say=say)
    say("== 2. features (SQL) and training (autoglm pipeline + search)")
    trained = train_in(wd, trials=trials, estimators=estimators, say=say)

    say("== 3. the decision service")
    wd.home.mkdir(parents=True, exist_ok=True)
    gw = open_store(str(wd.home / "state.db"))
    key, _ = create_key(gw, f"risk-demo-{int(time.time())}")
    gw.close()
    port = _free_port()
    proc = _start_server(wd, key, port, wd.root / "serve.log")
    base = f"http://127.0.0.1:{port}"
    say(f"serving on {base} (POST /v1/risk/decide), model risk/{trained.version}, key {key[:12]}...")
    headers = {"Authorization": f"Bearer {key}"}
    summary: dict[str, Any] = {"model_version": trained.version, "port": port}
    try:
        client = httpx.Client(base_url=base, headers=headers, timeout=60)
        tx = _sample_stream(pd.read_parquet(wd.stream), stream, seed)
        say(f"== 4. replaying {len(tx):,} live transactions in time order ({int(tx.is_fraud.sum())} of them fraud: "
            "every fraud of the stream period and a random sample of the rest)")
        lat, decisions, shown = [], [], 0
        fields = ["user_id", "card_id", "device_id", "merchant_id", "amount", "ip", "ts", "country", "continent",
                  "lat", "lon"]
        for row in tx.itertuples(index=False):
            body = {f: (getattr(row, f).item() if hasattr(getattr(row, f), "item") else getattr(row, f)) for f in fields}
            body["transaction_id"] = int(row.txn_id)
            t0 = time.perf_counter()
            r = client.post("/v1/risk/decide", json=body)
            lat.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise AutoGLMError(f"decide answered {r.status_code}: {r.text[:300]}")
            d = r.json()
            decisions.append((int(row.txn_id), d["decision"], d["score"], d["decision_id"], int(row.is_fraud),
                              float(row.amount)))
            every = max(1, len(tx) // 10)
            if (d["decision"] != "approve" and shown < show) or len(decisions) % every == 0:
                shown += 1
                why = "; ".join(x["text"] for x in d["reasons"])
                hits = ",".join(h["rule"] + ("(shadow)" if h["shadow"] else "") for h in d["rule_hits"]) or "-"
                truth = f"[truly {'FRAUD' if row.is_fraud else 'legit'}]"
                say(f"  {d['decision']:>13} score={d['score']:.3f} amount={row.amount:>10,.2f} rules={hits} "
                    f"{truth}\n                because: {why}")
        dec = pd.DataFrame(decisions, columns=["txn_id", "decision", "score", "decision_id", "is_fraud", "amount"])
        counts = dec.decision.value_counts().to_dict()
        caught = int(((dec.decision != "approve") & (dec.is_fraud == 1)).sum())
        summary.update(decisions=counts, stream=len(dec), stream_fraud=int(dec.is_fraud.sum()), caught=caught,
                       client_p50_ms=float(np.percentile(lat, 50)), client_p99_ms=float(np.percentile(lat, 99)))
        say(f"decisions: {counts}; fraud stopped (not approved): {caught} of {int(dec.is_fraud.sum())}; "
            f"client latency p50 {summary['client_p50_ms']:.1f} ms, p99 {summary['client_p99_ms']:.1f} ms "
            "(sequential, over HTTP)")

        say(f"== 5. reviewing: claim and resolve up to {reviews} open cases, then the chargeback feed")
        queue = client.get("/v1/risk/reviews", params={"status": "open", "limit": reviews}).json()["data"]
        truth = dict(zip(dec.decision_id, dec.is_fraud))
        for case in queue:
            client.post(f"/v1/risk/reviews/{case['decision_id']}/claim", json={"reviewer": "demo-reviewer"})
            label = "fraud" if truth.get(case["decision_id"]) else "legit"
            res = client.post(f"/v1/risk/reviews/{case['decision_id']}/resolve",
                              json={"label": label, "reviewer": "demo-reviewer", "note": "demo"}).json()
            say(f"  resolved {case['decision_id']} ({case['decision']}, score {case['score']:.3f}) as {label} "
                f"-> {res['status']}")
        summary["resolved"] = len(queue)
        labels = [{"transaction_id": int(t), "label": "fraud" if y else "legit"} for t, y in
                  zip(dec.txn_id, dec.is_fraud)]
        client.post("/v1/risk/labels", json={"labels": labels})
        mon = client.get("/v1/risk/monitor").json()
        summary["monitor"] = mon
        say(f"monitoring: prediction drift rate {mon.get('prediction_drift_rate')}, AUC on labelled decisions "
            f"{mon.get('auc_resolved')} (model's test AUC {mon.get('auc_reference')})")
        metrics = client.get("/metrics").text
        summary["metrics_lines"] = sum(1 for line in metrics.splitlines() if line.startswith("risk_"))

        if retrain:
            say("== 6. the loop: retrain on the labels (autoglm loop: feedback_count trigger, search, gate, promote)")
            r = client.post("/v1/risk/admin/retrain", json={"min_feedback": max(1, len(queue)),
                                                            "trials": retrain_trials or trials,
                                                            "estimators": estimators}, timeout=1800)
            if r.status_code != 200:
                raise AutoGLMError(f"retrain answered {r.status_code}: {r.text[:300]}")
            summary["retrain"] = r.json()
            say(f"  {summary['retrain']}")
        client.close()
    finally:
        _stop(proc)

    say("== 7. backtest of the stream period with the model that served it")
    stream_from = int(meta["stream_from"])
    report = backtest_stored(wd, stream_from, stream_from + int(stream_days * 86_400_000) + 1,
                             version=trained.version)
    say(format_report(report))
    summary["backtest"] = {"rows": report.rows, "frauds": report.frauds,
                           "auc_model": report.modes["both"]["auc"],
                           "extra_fraud_caught_same_review_rate": report.matched["extra_fraud_caught"]}
    summary["seconds"] = round(time.monotonic() - t_all, 1)
    say(f"== done in {summary['seconds']}s. Working directory: {wd.root}")
    return summary
