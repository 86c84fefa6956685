"""The application's verbs over a working directory (what the CLI calls): generate, train, serve, retrain,
backtest. Each is a function of its inputs; none parses arguments or prints (``say`` receives progress lines).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from autoglm_risk.generate import DAY_MS, generate
from autoglm_risk.workdir import Workdir

__all__ = ["generate_into", "train_in", "build_engine", "serve", "backtest_fresh", "backtest_stored"]

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def generate_into(wd: Workdir, *, users: int, days: int, seed: int, stream_days: float = 0, fraud_rate: float = 1.0,
                  store: str | None = None, say: Say = _quiet) -> dict[str, Any]:
    """Generate a dataset; the last ``stream_days`` are kept out of the store as the live stream."""
    from autoglm_risk.store import write_dataset

    t0 = time.monotonic()
    d = generate(users, days, seed=seed, fraud_rate=fraud_rate)
    say(f"generated {d.info['rows']:,} transactions ({d.info['fraud_rows']:,} fraud) for {users:,} users over "
        f"{days} days in {time.monotonic() - t0:.1f}s: {d.info['fraud_by_type']}")
    tx = d.transactions
    cut = d.start_ms + int((days - stream_days) * DAY_MS)
    tables = {**d.tables(), "transactions": tx[tx.ts < cut]}
    wd.root.mkdir(parents=True, exist_ok=True)
    url = store or str(wd.root / "risk.duckdb")
    from autoglm_risk.store import open_store

    with open_store(url) as s:
        write_dataset(s, tables, progress=say)
    if stream_days:
        tx[tx.ts >= cut].to_parquet(wd.stream, index=False)
    meta = {"store": url, "users": users, "days": days, "seed": seed, "stream_days": stream_days,
            "start_ms": d.start_ms, "stream_from": cut, "info": d.info}
    wd.save_meta(meta)
    return meta


def train_in(wd: Workdir, *, trials: int = 8, estimators: int = 100, valid_days: float = 4, test_days: float = 4,
             store: str | None = None, say: Say = _quiet) -> Any:
    """Export the features, write the pipeline, run the search, calibrate, promote to @champion."""
    import io

    from autoglm_risk import model as M

    with wd.open_store(store) as s:
        M.export_training_data(s, wd.data, valid_days=valid_days, test_days=test_days, progress=say)
    pipeline = M.write_pipeline(wd.data, wd.root / "risk.yaml", n_trials=trials, n_estimators=estimators,
                                tracking_uri=M.tracking_uri_for(wd.home))
    say(f"training: {pipeline} ({trials} trials of LightGBM, Bayesian search on valid_auc)")
    log = io.StringIO()
    result = M.train(pipeline, home=wd.home, out=log)
    say(f"trained {M.MODEL_NAME} version {result.version} @champion in {result.seconds:.0f}s: best valid_auc "
        f"{result.best_value:.4f}, test AUC {result.calibration.get('auc_test') or float('nan'):.4f}, Brier "
        f"{result.calibration['brier_test_raw']:.5f} -> {result.calibration['brier_test_calibrated']:.5f} "
        "calibrated")
    return result


def build_engine(wd: Workdir, *, rules: str | None = None, store: str | None = None, summary: Any = None) -> Any:
    from autoglm_risk.engine import RiskEngine
    from autoglm_risk.model import RiskModel
    from autoglm_risk.rules import load_rules

    s = wd.open_store(store)
    return RiskEngine(s, load_rules(rules), RiskModel.champion(wd.home), home=wd.home,
                      feedback_url=str(wd.home / "state.db"), summary=summary)


def serve(wd: Workdir, *, host: str = "127.0.0.1", port: int = 8100, keys: list[str] | None = None,
          rules: str | None = None, store: str | None = None, allow_anonymous: bool = False,
          summary: Any = None) -> None:
    import uvicorn

    from autoglm.gateway import open_store
    from autoglm_risk.service import KeyChecker, build_risk_app

    engine = build_engine(wd, rules=rules, store=store, summary=summary)
    checker = KeyChecker(keys, open_store(str(wd.home / "state.db")))
    app = build_risk_app(engine, checker, allow_anonymous=allow_anonymous)
    app.state.workdir = wd
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def backtest_stored(wd: Workdir, since: int, until: int, *, version: str | None = None, rules: str | None = None,
                    store: str | None = None, review_cost: float = 5.0) -> Any:
    from autoglm_risk.backtest import backtest
    from autoglm_risk.model import RiskModel
    from autoglm_risk.rules import load_rules

    model = RiskModel(wd.home, version) if version else RiskModel.champion(wd.home)
    with wd.open_store(store) as s:
        return backtest(s, load_rules(rules), model, since, until, review_cost=review_cost)


def backtest_fresh(wd: Workdir, *, seed: int, users: int, days: int = 30, history_days: int = 30,
                   rules: str | None = None, review_cost: float = 5.0, say: Say = _quiet) -> Any:
    """A month the model never saw, from a generator seed it was not developed on: ``history_days`` of
    history, then ``days`` replayed."""
    from autoglm_risk.backtest import backtest
    from autoglm_risk.model import RiskModel
    from autoglm_risk.rules import load_rules
    from autoglm_risk.store import open_store, write_dataset

    d = generate(users, history_days + days, seed=seed)
    path = wd.root / f"backtest-seed{seed}.duckdb"
    path.unlink(missing_ok=True)
    with open_store(path) as s:
        write_dataset(s, d.tables())
        since = d.start_ms + history_days * DAY_MS
        say(f"backtest data: seed {seed}, {users:,} users, {d.info['rows']:,} rows; replaying the last {days} days")
        return backtest(s, load_rules(rules), RiskModel.champion(wd.home), since, since + days * DAY_MS,
                        review_cost=review_cost)
