"""`graphgate keys create`: make a key, print it once, and print its `[[keys]]` entry.

Nothing is written to disk: the operator appends the entry to the keys file (which holds
only the hash) and stores the key itself in a secret manager.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from service.security.api_keys import REMOVED_SCOPES, generate_key, hash_key, text_problem
from service.security.principal import ALL_SCOPES, WILDCARD
from service.settings.security import check_limit_string

DEFAULT_SCOPES = "threads:read threads:write runs:create"
EXIT_USAGE = 2


class _InputError(Exception):
    pass


def add_keys_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `keys create` on the `graphgate` command's sub-parsers."""
    keys = subparsers.add_parser("keys", help="create API keys (entries for [auth] api_keys_file)")
    commands = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    create = commands.add_parser(
        "create",
        help="print a new API key once, and the [[keys]] entry to add to the keys file",
        description="Print a new API key (shown once; it cannot be recovered) and the "
        "[[keys]] entry holding its hash. Append the entry to the keys file, then reload "
        "(SIGHUP) or restart. Revoke a key by deleting its entry.",
    )
    create.add_argument("--tenant", required=True, help="tenant the key acts for")
    create.add_argument("--name", required=True, help="who or what holds the key (for audits)")
    create.add_argument(
        "--scopes", nargs="+", metavar="SCOPE",
        help=f"granted scopes, space or comma separated, from {', '.join(ALL_SCOPES)} or "
        f"'{WILDCARD}' for all (default: {DEFAULT_SCOPES})",
    )
    create.add_argument("--rate-limit", help="per-key limit such as 100/minute;2000/hour")
    create.add_argument(
        "--expires-at", help="RFC 3339 expiry with a timezone, e.g. 2030-01-01T00:00:00Z"
    )


def _scopes(values: Iterable[str] | None) -> list[str]:
    tokens = [t for v in (values or [DEFAULT_SCOPES]) for t in re.split(r"[\s,]+", v) if t]
    if not tokens:
        raise _InputError("--scopes needs at least one scope")
    unknown = [t for t in tokens if t not in (*ALL_SCOPES, WILDCARD)]
    if unknown:
        allowed = ", ".join((*ALL_SCOPES, WILDCARD))
        removed = REMOVED_SCOPES.get(unknown[0])
        reason = f": {removed}" if removed else ""
        raise _InputError(f"unknown scope {unknown[0]!r}{reason} (allowed: {allowed})")
    return sorted(set(tokens))


def _expiry(value: str | None, now: datetime) -> datetime | None:
    if value is None:
        return None
    try:
        expires_at = datetime.fromisoformat(value)
    except ValueError:
        raise _InputError(f"--expires-at {value!r} is not an RFC 3339 date-time") from None
    if expires_at.tzinfo is None or expires_at.utcoffset() is None:
        raise _InputError("--expires-at needs a timezone, e.g. 2030-01-01T00:00:00Z")
    if expires_at <= now:
        raise _InputError("--expires-at is in the past")
    return expires_at


def toml_string(value: str) -> str:
    """A TOML basic string holding exactly `value`."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_datetime(value: datetime) -> str:
    # isoformat() of an aware datetime is a valid TOML offset date-time.
    return value.isoformat()


def keys_entry(key_id: str, key: str, *, tenant: str, name: str, scopes: list[str],
               rate_limit: str | None, expires_at: datetime | None, created: datetime) -> str:
    """The `[[keys]]` block for a key: its hash, never the key."""
    lines = [
        f"# created {_toml_datetime(created.replace(microsecond=0))} by graphgate keys create",
        "[[keys]]",
        f"id = {toml_string(key_id)}",
        f"hash = {toml_string(hash_key(key))}",
        f"tenant = {toml_string(tenant)}",
        f"name = {toml_string(name)}",
        f"scopes = [{', '.join(toml_string(s) for s in scopes)}]",
    ]
    if rate_limit is not None:
        lines.append(f"rate_limit = {toml_string(rate_limit)}")
    if expires_at is not None:
        lines.append(f"expires_at = {_toml_datetime(expires_at)}")
    return "\n".join(lines) + "\n"


def _create(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    try:
        for label, value in (("--tenant", args.tenant), ("--name", args.name)):
            problem = text_problem(value)
            if problem:
                raise _InputError(f"{label} {problem}")
        scopes = _scopes(args.scopes)
        if args.rate_limit is not None:
            try:
                check_limit_string(args.rate_limit)
            except ValueError as exc:
                raise _InputError(f"--rate-limit {exc}") from None
        expires_at = _expiry(args.expires_at, now)
    except _InputError as exc:
        print(f"graphgate keys create: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    key_id, key = generate_key()
    entry = keys_entry(key_id, key, tenant=args.tenant, name=args.name, scopes=scopes,
                       rate_limit=args.rate_limit, expires_at=expires_at, created=now)
    print(f"key: {key}")
    print("This key is shown once and cannot be recovered: store it in a secret manager now.")
    print("Append this entry to the API keys file ([auth] api_keys_file), then reload (SIGHUP)"
          " or restart:")
    print()
    print(entry, end="")
    return 0


def run_keys_command(args: argparse.Namespace) -> int:
    """Run a parsed `graphgate keys …` command; the exit code."""
    if args.keys_command == "create":
        return _create(args)
    raise AssertionError(f"unknown keys command {args.keys_command!r}")  # argparse prevents it
