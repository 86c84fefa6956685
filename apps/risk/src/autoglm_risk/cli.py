"""``autoglm-risk``: parse, call :mod:`autoglm_risk.app` / :mod:`.demo`, print. Errors are one line and exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from autoglm.errors import AutoGLMError

__all__ = ["main"]


def _say(line: str) -> None:
    print(line, flush=True)


def _wd(args: argparse.Namespace) -> Any:
    from autoglm_risk.workdir import Workdir

    return Workdir(args.workdir)


def cmd_generate(a: argparse.Namespace) -> None:
    from autoglm_risk.app import generate_into

    generate_into(_wd(a), users=a.users, days=a.days, seed=a.seed, stream_days=a.stream_days,
                  fraud_rate=a.fraud_rate, store=a.store, say=_say)


def cmd_train(a: argparse.Namespace) -> None:
    from autoglm_risk.app import train_in

    train_in(_wd(a), trials=a.trials, estimators=a.estimators, valid_days=a.valid_days, test_days=a.test_days,
             store=a.store, say=_say)


def cmd_serve(a: argparse.Namespace) -> None:
    import os

    from autoglm_risk.app import serve
    from autoglm_risk.summary import SummaryConfig

    summary = None
    if a.summary_url:
        summary = SummaryConfig(base_url=a.summary_url, model=a.summary_model,
                                api_key=os.environ.get(a.summary_key_env) or "none")
    serve(_wd(a), host=a.host, port=a.port, keys=a.key, rules=a.rules, store=a.store,
          allow_anonymous=a.allow_anonymous, summary=summary)


def cmd_key(a: argparse.Namespace) -> None:
    from autoglm.gateway import create_key, open_store

    wd = _wd(a)
    wd.home.mkdir(parents=True, exist_ok=True)
    store = open_store(str(wd.home / "state.db"))
    key, info = create_key(store, a.name)
    store.close()
    print(key)
    print(f"created key {info.name} ({info.prefix}...); it is shown once", file=sys.stderr)


def cmd_retrain(a: argparse.Namespace) -> None:
    from autoglm_risk.loop import retrain

    wd = _wd(a)
    with wd.open_store(a.store) as s:
        r = retrain(s, wd.root, home=wd.home, min_feedback=a.min_feedback, n_trials=a.trials,
                    n_estimators=a.estimators, progress=_say)
    print(json.dumps(r.__dict__, default=str))


def cmd_backtest(a: argparse.Namespace) -> None:
    from autoglm_risk.app import backtest_fresh, backtest_stored
    from autoglm_risk.backtest import format_report

    wd = _wd(a)
    if a.since is not None:
        until = a.until if a.until is not None else a.since + int(a.days * 86_400_000)
        report = backtest_stored(wd, a.since, until, version=a.version, rules=a.rules, store=a.store,
                                 review_cost=a.review_cost)
    else:
        report = backtest_fresh(wd, seed=a.seed, users=a.users, days=a.days, rules=a.rules,
                                review_cost=a.review_cost, say=_say)
    print(format_report(report))


def cmd_demo(a: argparse.Namespace) -> None:
    from autoglm_risk.demo import run_demo

    summary = run_demo(_wd(a), users=a.users, days=a.days, stream_days=a.stream_days, seed=a.seed, trials=a.trials,
                       estimators=a.estimators, stream=a.stream, reviews=a.reviews, retrain=not a.no_retrain,
                       retrain_trials=a.retrain_trials, show=a.show, fraud_rate=a.fraud_rate)
    if a.summary_json:
        with open(a.summary_json, "w") as fh:
            json.dump(summary, fh, default=str, indent=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoglm-risk", description="Finance risk control on Open-AutoGLM.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--workdir", default="risk-work", help="the application's working directory")
        sp.add_argument("--store", default=None, help="postgresql://... or a .duckdb path (default: WORKDIR/risk.duckdb)")

    g = sub.add_parser("generate", help="synthetic users, transactions and labelled fraud into the store")
    common(g)
    g.add_argument("--users", type=int, default=5000)
    g.add_argument("--days", type=int, default=35)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--stream-days", type=float, default=0, help="keep the last N days out of the store (a live stream)")
    g.add_argument("--fraud-rate", type=float, default=1.0)
    g.set_defaults(fn=cmd_generate)

    t = sub.add_parser("train", help="features, LightGBM with a search, calibration, MLflow @champion")
    common(t)
    t.add_argument("--trials", type=int, default=8)
    t.add_argument("--estimators", type=int, default=100)
    t.add_argument("--valid-days", type=float, default=4)
    t.add_argument("--test-days", type=float, default=4)
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("serve", help="the decision service (POST /v1/risk/decide)")
    common(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8100)
    s.add_argument("--key", action="append", help="a static API key (repeat); autoglm gateway keys always work")
    s.add_argument("--rules", default=None, help="a rules YAML file (default: the shipped data/rules.yaml)")
    s.add_argument("--allow-anonymous", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--summary-url", default=None, help="an OpenAI-compatible server (e.g. autoglm serve: "
                   "http://127.0.0.1:8000/v1) whose GLM writes a summary of each review case, off the decision path")
    s.add_argument("--summary-model", default="glm-4-9b-chat", help="the served model for summaries")
    s.add_argument("--summary-key-env", default="AUTOGLM_RISK_SUMMARY_KEY",
                   help="the environment variable that holds the summary server's API key")
    s.set_defaults(fn=cmd_serve)

    k = sub.add_parser("key", help="create an API key for the service (an autoglm gateway key)")
    common(k)
    k.add_argument("name")
    k.set_defaults(fn=cmd_key)

    r = sub.add_parser("retrain", help="one turn of autoglm's loop on the labels in the store")
    common(r)
    r.add_argument("--min-feedback", type=int, default=1)
    r.add_argument("--trials", type=int, default=4)
    r.add_argument("--estimators", type=int, default=100)
    r.set_defaults(fn=cmd_retrain)

    b = sub.add_parser("backtest", help="replay a held-out period: rules only, model only, both")
    common(b)
    b.add_argument("--seed", type=int, default=2027, help="a fresh month from this generator seed (default)")
    b.add_argument("--users", type=int, default=3000)
    b.add_argument("--days", type=float, default=30)
    b.add_argument("--since", type=int, default=None, help="instead: replay the store from this epoch ms")
    b.add_argument("--until", type=int, default=None)
    b.add_argument("--version", default=None, help="model version (default @champion)")
    b.add_argument("--rules", default=None)
    b.add_argument("--review-cost", type=float, default=5.0)
    b.set_defaults(fn=cmd_backtest)

    d = sub.add_parser("demo", help="everything: data, features, search, service, live stream, reviews, retrain")
    common(d)
    d.add_argument("--users", type=int, default=3000)
    d.add_argument("--days", type=int, default=35)
    d.add_argument("--stream-days", type=float, default=2)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--trials", type=int, default=6)
    d.add_argument("--retrain-trials", type=int, default=None)
    d.add_argument("--estimators", type=int, default=100)
    d.add_argument("--stream", type=int, default=1500, help="how many stream transactions to replay")
    d.add_argument("--reviews", type=int, default=10)
    d.add_argument("--no-retrain", action="store_true")
    d.add_argument("--fraud-rate", type=float, default=2.0, help="fraud events, relative to the default rate")
    d.add_argument("--show", type=int, default=25, help="how many non-approved decisions to print")
    d.add_argument("--summary-json", default=None)
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except AutoGLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
