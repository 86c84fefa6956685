"""``autoglm monitor status|pin|reset``: the served-model monitor's windows, drift and reference, from the store.

Thin: parse, call :mod:`autoglm.monitoring.window_store`, print. The store is ``--store URL``, else
``AUTOGLM_STATE_URL``, else ``<AUTOGLM_HOME>/state.db`` (the server's state store), so this reads what
every server process sharing that store wrote.

* ``status [--model M] [--windows N] [--json]``: per model the drift rate of the last hour, the
  reference, AUC and mean rating, then the last N windows with their state and max PSI/KL.
* ``pin --model M [--since 1h] [--until T]``: the evaluated windows in that range become the reference
  (instead of the first windows after start); the next windows are compared with it.
* ``reset [--model M]``: forget the reference; the next windows with traffic form a new one.
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

__all__ = ["register", "run"]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("monitor", help="drift and quality of the served models: windows, reference, AUC")
    p.add_argument("--store", metavar="URL", help="state store (sqlite path/URL or postgresql://...)")
    sub = p.add_subparsers(dest="monitor_command", metavar="ACTION")
    st = sub.add_parser("status", help="drift rate, reference, AUC and the latest windows per model")
    st.add_argument("--model", help="only this model")
    st.add_argument("--windows", type=int, default=12, help="how many recent windows to list (default 12)")
    st.add_argument("--json", action="store_true", help="print JSON")
    pin = sub.add_parser("pin", help="make the windows of a time range the reference")
    pin.add_argument("--model", required=True, help="the served model's name")
    pin.add_argument("--since", default="1h",
                     help="windows that started since (7d, 12h, 90m, epoch s, ISO; default 1h)")
    pin.add_argument("--until", help="... and before (default: now)")
    rs = sub.add_parser("reset", help="forget the reference: the next windows form a new one")
    rs.add_argument("--model", help="only this model (default: every model)")
    for q in (st, pin, rs):
        q.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=run, _monitor_parser=p)


def run(args: argparse.Namespace) -> int:
    from autoglm.errors import ConfigError
    from autoglm.feedback.store import parse_since
    from autoglm.gateway.facade import GatewaySettings
    from autoglm.gateway.store import open_store
    from autoglm.monitoring.window_store import WindowStore

    if not args.monitor_command:
        args._monitor_parser.print_help()
        return 2
    if args.monitor_command == "status" and not 0 <= args.windows <= 100_000:
        raise ConfigError(f"--windows must be in 0..100000, got {args.windows}")
    since = parse_since(getattr(args, "since", None))  # flags first: a typo opens nothing
    until = parse_since(getattr(args, "until", None))
    settings = GatewaySettings.from_env(store_url=args.store)
    with open_store(settings.store_url) as store:
        ws = WindowStore(store)
        if args.monitor_command == "pin":
            ref = ws.pin_reference(args.model, since, until)
            print(f"pinned the reference of {args.model}: {ref.windows} window(s), {ref.n} request(s), "
                  f"{_iso(ref.first_window or 0)} .. {_iso(ref.last_window or 0)}")
            return 0
        if args.monitor_command == "reset":
            n = ws.reset_reference(args.model)
            print(f"forgot {n} reference(s); the next windows with traffic form the new one")
            return 0
        return _status(ws, store, args)


def _status(ws: object, store: object, args: argparse.Namespace) -> int:
    from autoglm.monitoring.quality import quality_of

    now = time.time()
    hour = now - 3600
    models = [args.model] if args.model else ws.models()  # type: ignore[attr-defined]
    quality = quality_of(ws, store, hour, 1)
    report = []
    for model in models:
        rate = ws.drift_rate(model=model, since=hour)  # type: ignore[attr-defined]
        ref = ws.reference(model)  # type: ignore[attr-defined]
        q = quality.get(model)
        windows = ws.windows(model=model, limit=args.windows) if args.windows else []  # type: ignore[attr-defined]
        report.append({"model": model, "prediction_drift_rate": rate.rate, "tested": rate.tested,
                       "fired": rate.fired, "windows_by_state": rate.by_state,
                       "reference": ref.to_dict() if ref else None,
                       "auc": q.auc if q else None, "labels": q.labels if q else 0,
                       "mean_rating": q.mean_rating if q else None, "ratings": q.ratings if q else 0,
                       "windows": [w.to_dict() for w in windows]})
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not report:
        print("no windows yet (the server writes them every monitoring.window seconds while it serves)")
        return 0
    for r in report:
        ref = r["reference"]
        ref_text = ("none yet" if ref is None else
                    f"{ref['source']}, {'complete' if ref['complete'] else 'learning'}: {ref['windows']} window(s), "
                    f"{ref['n']} request(s)")
        auc = f"{r['auc']:.3f} ({r['labels']} labels)" if r["auc"] is not None else f"- ({r['labels']} labels)"
        rating = f"{r['mean_rating']:+.3f} ({r['ratings']})" if r["mean_rating"] is not None else "-"
        print(f"{r['model']}: drift rate {r['prediction_drift_rate']:.3f} over the last hour "
              f"({r['fired']} of {r['tested']} tested windows fired); reference {ref_text}; AUC {auc}; "
              f"mean rating {rating}")
        for w in r["windows"]:
            psi = f"max PSI {w['max_psi']:.3f} KL {w['max_kl']:.3f}" if w["max_psi"] is not None else ""
            fired = [name for name, s in w["drift"].items() if s.get("fired")]
            extra = f" drifted: {', '.join(fired)}" if fired else ""
            print(f"  {_iso(w['window_start'])} +{w['window_s']}s  {w['state']:<12} n={w['n']:<6} {psi}{extra}")
    return 0
