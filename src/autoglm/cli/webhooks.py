"""``autoglm webhooks list|deliveries|redeliver|test|flush``: the webhooks file and the delivery log.
Thin: parse, call :mod:`autoglm.registry.webhooks`, print.

The file is ``--file`` or ``AUTOGLM_WEBHOOKS``; the delivery log is in the state store (``--store``,
else ``AUTOGLM_STATE_URL``, else ``<AUTOGLM_HOME>/state.db``). Secrets are never printed.
"""
from __future__ import annotations

import argparse
import json
import time

from autoglm.errors import ConfigError

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("webhooks", help="outbound webhook targets, the delivery log, dead letters")
    p.add_argument("--file", help="webhooks file (default: $AUTOGLM_WEBHOOKS)")
    p.add_argument("--store", metavar="URL", help="state store (sqlite path/URL or postgresql://...)")
    sub = p.add_subparsers(dest="webhooks_command", metavar="ACTION")
    lst = sub.add_parser("list", help="outbound targets and inbound hooks")
    d = sub.add_parser("deliveries", help="the delivery log, newest first")
    d.add_argument("--status", choices=("pending", "sending", "retrying", "delivered", "dead"))
    d.add_argument("--target")
    d.add_argument("--limit", type=int, default=50)
    r = sub.add_parser("redeliver", help="send a delivery (e.g. a dead letter) again, now")
    r.add_argument("id")
    t = sub.add_parser("test", help="send a webhook.test event to one target, now")
    t.add_argument("target")
    f = sub.add_parser("flush", help="send every delivery that is due (e.g. left by a pipeline that exited)")
    f.add_argument("--timeout", type=float, default=30.0, help="seconds to keep retrying (default 30)")
    for q in (lst, d, r, t, f):
        q.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run, _webhooks_parser=p)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _print_deliveries(rows: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    if not rows:
        print("no webhook deliveries")
        return
    print(f"{'ID':<36}  {'TARGET':<14} {'EVENT':<30} {'STATUS':<10} {'TRIES':>5}  {'UPDATED':<19}  LAST ERROR")
    for r in rows:
        print(f"{r.id:<36}  {r.target:<14} {r.event:<30} {r.status:<10} {r.attempts:>5}  {_when(r.updated_at):<19}  "
              f"{(r.last_error or '')[:60]}")


def run(args: argparse.Namespace) -> int:
    from autoglm.gateway.store import open_store
    from autoglm.registry import webhook_store as db
    from autoglm.registry.webhook_config import WebhookSettings
    from autoglm.registry.webhooks import WebhookSender

    if not args.webhooks_command:
        args._webhooks_parser.print_help()
        return 2
    settings = WebhookSettings.from_env(file=args.file, store_url=args.store)
    config = settings.config
    if args.webhooks_command == "list":
        out = {"file": settings.file,
               "outbound": [{"name": t.name,  # the URL without credentials or query (they may hold tokens)
                             "url": f"{t.url.scheme}://{t.url.host}:{t.url.port}{t.url.path or ''}",
                             "events": t.events, "signed": t.secret is not None, "max_attempts": t.max_attempts}
                            for t in config.outbound],
               "inbound": [{"name": h.name, "route": f"POST /admin/hooks/{h.name}", "action": h.action,
                            "tolerance_s": h.tolerance_s} for h in config.inbound]}
        if args.json:
            print(json.dumps(out, indent=2))
        elif not config.outbound and not config.inbound:
            print("no webhooks configured; write a webhooks file (outbound:/inbound:) and set AUTOGLM_WEBHOOKS")
        else:
            for t in out["outbound"]:
                print(f"out  {t['name']:<14} {t['url']}  events={','.join(t['events'])}  "
                      f"{'signed' if t['signed'] else 'UNSIGNED'}  max_attempts={t['max_attempts']}")
            for h in out["inbound"]:
                print(f"in   {h['name']:<14} {h['route']}  action={h['action']}  tolerance={h['tolerance_s']:.0f}s")
        return 0
    with open_store(settings.store_url) as store:
        db.migrate_webhooks(store)
        if args.webhooks_command == "deliveries":
            _print_deliveries(db.list_deliveries(store, status=args.status, target=args.target, limit=args.limit),
                              args.json)
            return 0
        sender = WebhookSender(config.outbound, store)
        try:
            if args.webhooks_command == "redeliver":
                sender.redeliver(args.id)
                sender.deliver_due()
                rows = [db.get_delivery(store, args.id)]
            elif args.webhooks_command == "test":
                if args.target not in sender.targets:
                    known = ", ".join(sender.targets) or "none"
                    raise ConfigError(f"no outbound target {args.target!r}; targets: {known}")
                only = sender.targets[args.target].model_copy(update={"events": ["*"]})  # whatever it subscribes to
                sender.targets = {args.target: only}
                ids = sender.emit("webhook.test", {"message": "a test delivery from `autoglm webhooks test`"})
                sender.deliver_due()
                rows = [db.get_delivery(store, i) for i in ids]
            else:  # flush
                drained = sender.flush(args.timeout)
                rows = [r for s in ("retrying", "pending", "dead") for r in db.list_deliveries(store, status=s)]
                if not drained:
                    print(f"still waiting after {args.timeout:.0f}s:")
        finally:
            sender.close()
        _print_deliveries([r for r in rows if r is not None], args.json)
        failed = [r for r in rows if r is not None and r.status in ("retrying", "dead")]
        return 1 if failed and args.webhooks_command != "flush" else 0
