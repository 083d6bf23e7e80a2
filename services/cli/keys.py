"""`atalaya keys create|list|revoke`: the gateway's API keys (services.common.api_keys).

The key file is the one the gateway reads (--file, default
$ATALAYA_GATEWAY_AUTH__API_KEYS_FILE); in a cluster it becomes the Secret the chart
mounts. `create` prints the new key once, alone on stdout; nothing prints it again,
and `list` shows neither keys nor their hashes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from services.common.api_keys import ApiKeyStore, ApiKeyStoreError
from services.common.validation import MAX_ID_CHARS

FILE_ENV = "ATALAYA_GATEWAY_AUTH__API_KEYS_FILE"
COLUMNS = ("id", "name", "tenant", "user", "scopes", "created", "revoked")


def _id(text: str) -> str:
    if not text or len(text) > MAX_ID_CHARS or not text.isprintable() or text != text.strip():
        raise argparse.ArgumentTypeError(f"expected 1-{MAX_ID_CHARS} printable characters")
    return text


def _scope(text: str) -> str:
    if not text or any(c.isspace() for c in text) or not text.isprintable():
        raise argparse.ArgumentTypeError("a scope is one word")
    return text


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="the gateway's API keys: create, list, revoke")
    keys.add_argument(
        "--file", type=Path, default=None, help=f"the key file (default: ${FILE_ENV})"
    )
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key (printed once)")
    create.add_argument("--tenant", type=_id, required=True)
    create.add_argument("--user", type=_id, help="the user it acts as (default: none)")
    create.add_argument(
        "--scope", dest="scopes", type=_scope, action="append", default=[], help="repeatable"
    )
    create.add_argument("--name", type=_id, required=True, help="what the key is for")
    listing = actions.add_parser("list", help="every key, without the keys themselves")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("id")


def _file(args: argparse.Namespace) -> Path | None:
    if args.file is not None:
        return Path(args.file)
    env = os.environ.get(FILE_ENV)
    return Path(env) if env else None


def run(args: argparse.Namespace) -> int:
    path = _file(args)
    if path is None:
        print(f"atalaya keys: give --file or set {FILE_ENV}", file=sys.stderr)
        return 2
    store = ApiKeyStore(path)
    try:
        if args.keys_command == "create":
            record, key = store.create(
                tenant=args.tenant, user=args.user or "", scopes=args.scopes, name=args.name
            )
            print(key)
            print(
                f"created key {record.id} ({record.name}) for tenant {record.tenant}; "
                "it is shown only now",
                file=sys.stderr,
            )
            return 0
        if args.keys_command == "list":
            _print_keys(store, as_json=args.json)
            return 0
        revoked = store.revoke(args.id)
        if revoked is None:
            print(f"no key with id {args.id!r}", file=sys.stderr)
            return 1
        print(f"revoked key {revoked.id} ({revoked.name})", file=sys.stderr)
        return 0
    except (ApiKeyStoreError, OSError) as exc:
        print(f"atalaya keys: {exc}", file=sys.stderr)
        return 1


def _print_keys(store: ApiKeyStore, *, as_json: bool) -> None:
    rows = [k.public() for k in store.records()]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    cells = [
        [" ".join(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else str(v)
         for v in (r[c] for c in COLUMNS)]
        for r in rows
    ]  # fmt: skip
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(COLUMNS)]
    for line in [list(COLUMNS), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
