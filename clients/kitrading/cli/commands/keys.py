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

import click

from kitrading.cli.common import (
    EXIT_ERROR,
    add_command,
    add_group,
    argument,
    choice,
    json_flag,
    option,
    print_json,
    print_table,
    state,
)

SCOPE_HELP = "read: every read; write: also writes and expensive calls (training, sync, analyze); admin: all"


def register(cli: click.Group) -> None:
    keys = add_group(
        cli,
        "keys",
        help="create, list and revoke the gateway's API keys",
        description="The gateway's API keys. Once one exists, every call through the gateway needs a key.",
        params=[
            option(
                "--secrets-dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help="folder of gateway_keys.json and gateway_signing_key (default: $KITRADING_HOME/secrets; "
                "deploy/secrets for compose)",
            )
        ],
    )
    add_command(
        keys,
        "create",
        run_create,
        help="make a key and print it once",
        params=[
            option("--scope", required=True, type=choice(("read", "write", "admin")), help=SCOPE_HELP),
            option("--name", default="", help="what the key is for (shown by `list`)"),
            option("--expires-days", type=float, default=None, help="the key stops working after this"),
            json_flag("print the key and its record as JSON"),
        ],
    )
    add_command(
        keys,
        "list",
        run_list,
        help="the keys (ids, scopes, names; never the tokens)",
        params=[json_flag()],
    )
    add_command(
        keys,
        "revoke",
        run_revoke,
        help="revoke a key by its id",
        params=[
            argument("key_id", metavar="ID", help="the key's id (k_...), from `kitrading keys list`"),
            json_flag("print the revoked key's record as JSON"),
        ],
    )


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


def _record(r: Any) -> dict[str, Any]:
    """A key's record as `keys list --json` prints it (never the token: the store has none)."""
    return {
        "id": r.id,
        "name": r.name,
        "scope": r.scope,
        "created": r.created,
        "expires": r.expires,
        "revoked": r.revoked,
    }


def run_list(args: argparse.Namespace) -> int:
    def listing(store: Any) -> int:
        records = store.records()
        if args.json:
            print_json([_record(r) for r in records])
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
                state("revoked" if r.revoked else "active"),
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
        if args.json:
            print_json(_record(record))
            return 0
        print(f"revoked {record.id} (scope {record.scope}). {APPLY}")
        return 0

    return _guarded(args, revoke)
