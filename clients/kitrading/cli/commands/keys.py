"""`kitrading keys create | list | revoke`: the gateway's API keys (docs/gateway.md, "Who can reach it").

Keys live in `$KITRADING_HOME/secrets/` (or `--secrets-dir`, or the files named by
`KITRADING_GATEWAY_KEYS_FILE` / `KITRADING_GATEWAY_SIGNING_KEY_FILE`): the records keep a SHA-256 of
each token, never the token, which `create` prints once.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from kitrading.cli.common import EXIT_ERROR, Subparsers, print_json, print_table

SCOPE_HELP = "read: every read; write: also writes and expensive calls (training, sync, analyze); admin: all"


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="create, list and revoke the gateway's API keys",
        description="The gateway's API keys. Once one exists, every call through the gateway needs a key.",
    )
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=None,
        help="folder of gateway_keys.json and gateway_signing_key (default: $KITRADING_HOME/secrets; "
        "deploy/secrets for compose)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a key and print it once")
    create.add_argument("--scope", required=True, choices=("read", "write", "admin"), help=SCOPE_HELP)
    create.add_argument("--name", default="", help="what the key is for (shown by `list`)")
    create.add_argument("--expires-days", type=float, default=None, help="the key stops working after this")
    create.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    create.set_defaults(handler=run_create)
    listing = actions.add_parser("list", help="the keys (ids, scopes, names; never the tokens)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_list)
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", metavar="ID", help="the key's id (k_...), from `kitrading keys list`")
    revoke.set_defaults(handler=run_revoke)


def _store(args: argparse.Namespace) -> Any:
    from gateway.keys import KeyStore

    return KeyStore.from_env(None, directory=args.secrets_dir)


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.datetime.fromtimestamp(value, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M")


APPLY = (
    "A running `kitrading up` applies it within a few seconds (it rebuilds the gateway's config and "
    "restarts the gateway); compose: `docker compose restart gateway`; Kubernetes: update the "
    "secret, then `kubectl rollout restart deployment/gateway`."
)


def _guarded(args: argparse.Namespace, action: Any) -> int:
    try:
        from services.runtime.config import ConfigError
    except ImportError as exc:
        print(
            f"kitrading keys: the server code is not installed ({exc}); run it from a checkout",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        result: int = action(_store(args))
    except ConfigError as exc:
        print(f"kitrading keys: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return result


def run_create(args: argparse.Namespace) -> int:
    def create(store: Any) -> int:
        first = not store.records()
        expires = None if args.expires_days is None else args.expires_days * 86400.0
        record, token = store.create(args.scope, name=args.name, expires_in_s=expires)
        if args.json:
            print_json({"id": record.id, "scope": record.scope, "name": record.name, "key": token})
            return 0
        print(f"created {record.id} (scope {record.scope}{', ' + record.name if record.name else ''})")
        print("the key (shown only now; the store keeps its SHA-256):")
        print(f"  {token}")
        print(
            "use it: export KITRADING_API_KEY=<key>  (or KITRADING_API_KEY_FILE=<file>), or the HTTP header"
        )
        print("  x-api-key: <key>  /  Authorization: Bearer <key>")
        if first:
            print(
                "this is the first key: from now on every call through the gateway needs one. " + APPLY,
                file=sys.stderr,
            )
        return 0

    return _guarded(args, create)


def run_list(args: argparse.Namespace) -> int:
    def listing(store: Any) -> int:
        records = store.records()
        if args.json:
            print_json(
                [
                    {
                        "id": r.id,
                        "name": r.name,
                        "scope": r.scope,
                        "created": r.created,
                        "expires": r.expires,
                        "revoked": r.revoked,
                    }
                    for r in records
                ]
            )
            return 0
        if not records:
            print("no API keys: the gateway needs none on loopback (`kitrading keys create --scope ...`)")
            return 0
        rows = [
            (
                r.id,
                r.scope,
                r.name or "-",
                _when(r.created),
                _when(r.expires),
                "revoked" if r.revoked else "active",
            )
            for r in records
        ]
        print_table(("id", "scope", "name", "created", "expires", "state"), rows)
        return 0

    return _guarded(args, listing)


def run_revoke(args: argparse.Namespace) -> int:
    def revoke(store: Any) -> int:
        try:
            record = store.revoke(args.key_id)
        except KeyError:
            print(f"kitrading keys revoke: no key {args.key_id} (see `kitrading keys list`)", file=sys.stderr)
            return EXIT_ERROR
        print(f"revoked {record.id} (scope {record.scope}). {APPLY}")
        return 0

    return _guarded(args, revoke)
