"""``autoglm keys``: create, list, revoke API keys and show usage. Thin: parse, call the library, print.

``create`` prints the key exactly once, with a warning to save it; nothing else ever shows it (the store
only has its hash). The store is ``--store URL``, else ``AUTOGLM_STATE_URL``, else
``<AUTOGLM_HOME>/state.db``; the hash pepper comes from ``AUTOGLM_KEY_PEPPER`` and must match the server's.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from autoglm.errors import ConfigError
from autoglm.gateway.keys import parse_expires

__all__ = ["register", "run", "parse_expires"]

def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):  # a row written before expiries were validated
        return f"invalid ({ts!r})"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="create, list and revoke API keys; show usage")
    p.add_argument("--store", metavar="URL", help="state store (sqlite path/URL or postgresql://...)")
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    c = sub.add_parser("create", help="create a key (printed once)")
    c.add_argument("--name", required=True, help="a unique name, shown in logs and usage")
    c.add_argument("--models", help="comma-separated models the key may use (default: all)")
    c.add_argument("--rpm", type=int, help="requests per minute (default: unlimited)")
    c.add_argument("--tpm", type=int, help="tokens per minute (default: unlimited)")
    c.add_argument("--expires", help="30d, 12h, 90m, 2w, or an ISO date (default: never)")
    lst = sub.add_parser("list", help="list keys (never the key itself)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    r = sub.add_parser("revoke", help="revoke a key by name or id")
    r.add_argument("name_or_id", metavar="NAME_OR_ID")
    u = sub.add_parser("usage", help="requests and tokens per key, model and day")
    u.add_argument("--key", help="only this key (name or id)")
    u.add_argument("--model", help="only this model")
    u.add_argument("--per", choices=["day", "hour"], default="day", help="period (default: day)")
    u.add_argument("--json", action="store_true", help="print JSON")
    for q in (c, lst, r, u):  # --store is accepted after the action too
        q.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=run, _keys_parser=p)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    from autoglm.gateway import keys as keys_mod
    from autoglm.gateway.facade import GatewaySettings
    from autoglm.gateway.store import open_store
    from autoglm.gateway.usage import query_usage

    if not args.keys_command:
        args._keys_parser.print_help()
        return 2
    settings = GatewaySettings.from_env(store_url=args.store)
    # Validate flags before touching the store, so a typo never creates or opens anything.
    expires_at = parse_expires(args.expires, what="--expires") if getattr(args, "expires", None) else None
    if args.keys_command == "create":
        keys_mod.check_limit("--rpm", args.rpm)
        keys_mod.check_limit("--tpm", args.tpm)
    with open_store(settings.store_url) as store:
        if args.keys_command == "create":
            models = [m for m in args.models.split(",")] if args.models is not None else None
            plaintext, info = keys_mod.create_key(
                store, args.name, models=models, rpm=args.rpm, tpm=args.tpm, expires_at=expires_at,
                pepper=settings.key_pepper,
            )
            print(f"created API key {info.name!r} (id {info.id}, prefix {info.prefix})")
            print(plaintext)
            print("save this key now: it is shown only once and cannot be recovered", file=sys.stderr)
            return 0
        if args.keys_command == "list":
            infos = keys_mod.list_keys(store)
            if args.json:
                print(json.dumps([
                    {**i.to_dict(), "created_at": _iso(i.created_at), "expires_at": _iso(i.expires_at),
                     "revoked_at": _iso(i.revoked_at), "active": i.is_active()}
                    for i in infos
                ], indent=2))
                return 0
            if not infos:
                print("no API keys yet (the gateway is open); create one with `autoglm keys create --name NAME`")
                return 0
            rows = [
                [i.name, i.id, i.prefix + "…", ",".join(i.models) if i.models else "*",
                 str(i.rpm or "-"), str(i.tpm or "-"), _iso(i.expires_at) or "never",
                 "revoked" if i.revoked_at else ("expired" if not i.is_active() else "active"),
                 _iso(i.created_at) or ""]
                for i in infos
            ]
            print(_table(["NAME", "ID", "PREFIX", "MODELS", "RPM", "TPM", "EXPIRES", "STATUS", "CREATED"], rows))
            return 0
        if args.keys_command == "revoke":
            info = keys_mod.revoke_key(store, args.name_or_id)
            print(f"revoked API key {info.name!r} (id {info.id}) at {_iso(info.revoked_at)}")
            return 0
        if args.keys_command == "usage":
            usage = query_usage(store, key=args.key, model=args.model, per=args.per)
            if args.json:
                print(json.dumps([u.to_dict() for u in usage], indent=2))
                return 0
            if not usage:
                print("no usage recorded yet")
                return 0
            rows = [[u.period_start, u.key, u.model, str(u.requests), str(u.prompt_tokens),
                     str(u.completion_tokens), str(u.total_tokens)] for u in usage]
            print(_table(["PERIOD", "KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"], rows))
            return 0
    raise ConfigError(f"unknown keys action {args.keys_command!r}")  # pragma: no cover - argparse prevents it
