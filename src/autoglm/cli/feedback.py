"""``autoglm feedback list|stats|export``: read the feedback the server stored; write training data.

Thin: parse, call :mod:`autoglm.feedback`, print. The store is ``--store URL``, else
``AUTOGLM_STATE_URL``, else ``<AUTOGLM_HOME>/state.db`` (the server's state store).
``export --format sft|dpo|kto --out FILE.jsonl`` writes what ``train.objective: sft|dpo|kto`` reads.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

__all__ = ["register", "run"]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("feedback", help="list feedback, show its stats, export SFT/DPO/KTO training data")
    p.add_argument("--store", metavar="URL", help="state store (sqlite path/URL or postgresql://...)")
    sub = p.add_subparsers(dest="feedback_command", metavar="ACTION")
    lst = sub.add_parser("list", help="feedback rows, oldest first")
    lst.add_argument("--since", help="epoch seconds, 7d / 12h, or an ISO date")
    lst.add_argument("--key", help="only this key id")
    lst.add_argument("--source", help="explicit, implicit:regeneration or implicit:follow_up")
    lst.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    st = sub.add_parser("stats", help="counts and mean rating per source, captured exchanges")
    st.add_argument("--since", help="epoch seconds, 7d / 12h, or an ISO date")
    ex = sub.add_parser("export", help="write SFT, DPO or KTO JSONL from the feedback")
    ex.add_argument("--format", required=True, choices=["sft", "dpo", "kto"])
    ex.add_argument("--out", required=True, metavar="FILE", help="the JSONL file to write")
    ex.add_argument("--since", help="feedback given since (epoch seconds, 7d / 12h, or an ISO date)")
    ex.add_argument("--lr", type=float, default=1.0, help="sft: weight = 1 + sum(signal) * lr (default 1.0)")
    ex.add_argument("--half-life-days", type=float, default=30.0, help="a signal this old counts half (30)")
    ex.add_argument("--implicit-weight", type=float, default=0.5, help="implicit signals count this much (0.5)")
    ex.add_argument("--min-support", type=int, default=1, help="signals a row needs (default 1)")
    for q in (lst, st, ex):
        q.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=run, _feedback_parser=p)


def run(args: argparse.Namespace) -> int:
    from autoglm.feedback.export import ExportOptions, export_rows, write_jsonl
    from autoglm.feedback.store import FeedbackStore, parse_since
    from autoglm.gateway.facade import GatewaySettings
    from autoglm.gateway.store import open_store

    if not args.feedback_command:
        args._feedback_parser.print_help()
        return 2
    since = parse_since(getattr(args, "since", None))  # flags first: a typo opens nothing
    options = None
    if args.feedback_command == "export":
        options = ExportOptions(format=args.format, since=since, lr=args.lr, half_life_days=args.half_life_days,
                                implicit_weight=args.implicit_weight, min_support=args.min_support)
    settings = GatewaySettings.from_env(store_url=args.store)
    with open_store(settings.store_url) as store:
        fs = FeedbackStore(store)
        if args.feedback_command == "list":
            rows = fs.list_feedback(since=since, key_id=args.key, source=args.source, limit=args.limit)
            if args.json:
                print(json.dumps([r.to_dict() for r in rows], indent=2, ensure_ascii=False))
                return 0
            if not rows:
                print("no feedback yet (capture must be on: gateway.capture in the deploy file)")
                return 0
            for r in rows:
                rating = f"{r.rating:+.2f}" if r.rating is not None else "  -  "
                extra = " correction" if r.correction else ""
                extra += f" over {r.other_id}" if r.other_id else ""
                extra += f" tags={','.join(r.tags)}" if r.tags else ""
                print(f"{_iso(r.created_at)}  {r.id}  {r.source:<22} {rating}  {r.response_id}#{r.choice_index}{extra}")
            return 0
        if args.feedback_command == "stats":
            print(json.dumps(fs.stats(since=since), indent=2))
            return 0
        assert options is not None
        result = export_rows(fs, options)
    n = write_jsonl(result.rows, args.out)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(result.stats.items()) if k not in ("rows", "feedback"))
    print(f"wrote {n} {args.format} row(s) to {args.out} from {result.stats.get('feedback', 0)} feedback row(s)"
          + (f" ({skipped})" if skipped else ""))
    if n == 0:
        print("nothing to export: rate responses with POST /v1/feedback first (or lower --min-support)",
              file=sys.stderr)
    return 0
