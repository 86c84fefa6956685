"""``autoglm loop run DEPLOY.yaml [--once]`` and ``autoglm loop status``: the improvement loop.

Thin: read the ``improve:`` section, call :func:`autoglm.loop.controller.run_loop_once` (once, or every
``improve.interval`` seconds until Ctrl-C), print one line per turn. With ``improve.webhooks`` (a webhooks
file) every loop event also goes to its outbound targets; with ``--redeploy URL`` (or ``improve.redeploy``)
each promotion makes those running servers swap to the new champion. ``status`` prints each loop's state file.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("loop", help="retrain on feedback, gate against the champion, promote")
    sub = p.add_subparsers(dest="loop_command", metavar="ACTION")
    r = sub.add_parser("run", help="check the triggers; run a cycle when one fires")
    r.add_argument("file", type=Path, help="a deploy file with an improve: section (or a file with only improve:)")
    r.add_argument("--once", action="store_true", help="one turn, then exit (default: every improve.interval s)")
    r.add_argument("--store", metavar="URL", help="feedback state store (default: improve.store, "
                   "gateway.state_store, AUTOGLM_STATE_URL, <AUTOGLM_HOME>/state.db)")
    r.add_argument("--redeploy", metavar="URL", action="append", default=None,
                   help="a running server (repeatable; default: improve.redeploy) that swaps to the new champion "
                        "after a promotion; sends $AUTOGLM_ADMIN_KEY")
    s = sub.add_parser("status", help="each loop's last cycles and the one in progress")
    s.add_argument("--json", action="store_true")
    p.set_defaults(func=run, _loop_parser=p)


def _webhooks(path: str | None, base: Path, store_url: str | None):
    if not path:
        return None, None
    from autoglm.gateway.store import open_store
    from autoglm.registry.webhook_config import load_webhooks_file
    from autoglm.registry.webhooks import WebhookSender

    file = Path(path) if Path(path).is_absolute() else base / path
    store = open_store(store_url)
    return WebhookSender(list(load_webhooks_file(file).outbound), store), store


def run(args: argparse.Namespace) -> int:
    from autoglm.config import default_store_dir

    if not args.loop_command:
        args._loop_parser.print_help()
        return 2
    home = default_store_dir()
    if args.loop_command == "status":
        from autoglm.loop.state import list_states

        states = list_states(home)
        if args.json:
            print(json.dumps(states, indent=2))
            return 0
        if not states:
            print("no loop has run yet (autoglm loop run DEPLOY.yaml --once)")
        for st in states:
            cycle = st.get("cycle")
            now = f"cycle {cycle['id']} at {cycle['phase']}" if cycle else "idle"
            print(f"{st['name']}: {now}; {len(st.get('history', []))} cycles, "
                  f"{len(st.get('champions', []))} promotions")
            for c in st.get("history", [])[-5:]:
                why = "; ".join((c.get("decision") or {}).get("reasons", []))
                print(f"  {c['id']} {c['trigger']}: {c['phase']} v{(c.get('candidate') or {}).get('version', '-')}"
                      f" - {why}")
        return 0
    from autoglm.gateway.facade import GatewaySettings
    from autoglm.loop.controller import load_improve, run_loop_once

    cfg, base, deploy_store = load_improve(args.file)
    store_url = args.store or cfg.store or deploy_store or GatewaySettings.from_env(store_url=None).store_url
    sender, wh_store = _webhooks(cfg.webhooks, base, store_url)
    subscribers = [sender.subscriber] if sender else []
    redeploy_urls = args.redeploy or list(cfg.redeploy)
    if redeploy_urls:  # a promotion's alias-set event makes each server swap (autoglm.deploy.redeploy)
        from autoglm.deploy.redeploy import RedeploySubscriber

        admin_key = GatewaySettings.from_env(store_url=None).admin_key
        subscribers.append(RedeploySubscriber(redeploy_urls, admin_key=admin_key,
                                              echo=lambda line: print(line, flush=True)))
    try:
        while True:
            outcome = run_loop_once(cfg, base_dir=base, home=home, store_url=store_url, subscribers=subscribers)
            version = ((outcome.cycle or {}).get("candidate") or {}).get("version")
            print(f"[loop {outcome.name}] {outcome.status}" + (f" v{version}" if version else "")
                  + f": {outcome.reason}", flush=True)
            if sender is not None:
                sender.deliver_due()
            if args.once:
                return 0
            time.sleep(cfg.interval)
    except KeyboardInterrupt:
        return 130
    finally:
        if wh_store is not None:
            wh_store.close()
