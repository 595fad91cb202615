"""Dump and restore the mesh's PostgreSQL database; the database half of backup.sh and restore.sh.

    python deploy/dbtool.py describe          # where the database is (password never shown)
    python deploy/dbtool.py dump FILE         # pg_dump --format=custom to FILE ("-": stdout)
    python deploy/dbtool.py restore FILE      # recreate the database and pg_restore FILE into it

The database is found the way the services find it (`services.runtime.database_settings`):
`KITRADING_DATABASE_URL`, else `TIMESCALE_HOST` (+ `TIMESCALE_PORT`, `TIMESCALE_DB`, `TIMESCALE_USER`,
`TIMESCALE_PASSWORD[_FILE]`), else the embedded PostgreSQL under `$KITRADING_HOME/postgres`, which is
attached to when `kitrading up` runs it, or started for the dump and stopped again when it does not.
The client binaries are those shipped in the `pgserver` package (PostgreSQL 16), unless
`KITRADING_PG_BIN` names another directory; they must not be older than the server.

Restore recreates the database (DROP ... WITH (FORCE), CREATE) so the result is exactly the dump, with
TimescaleDB's `timescaledb_pre_restore()` / `timescaledb_post_restore()` around it when the dump has
the extension. Stop the services first. The password travels in PGPASSWORD, never on a command line.

Exit codes: 0 done; 3 nothing to do (no database configured, or not reachable: `dump` only);
1 anything else, with the reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

NOTHING_TO_DO = 3


class DbToolError(RuntimeError):
    """A failure with a message for the operator."""


@dataclass(frozen=True, slots=True)
class Target:
    """A database to connect to: a libpq URL without password, and the password apart."""

    url: str
    password: str | None
    description: str

    @property
    def database(self) -> str:
        return unquote(urlsplit(self.url).path.lstrip("/")) or "postgres"

    def with_database(self, name: str) -> Target:
        parts = urlsplit(self.url)
        return Target(urlunsplit(parts._replace(path=f"/{name}")), self.password, self.description)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


def split_password(url: str) -> tuple[str, str | None]:
    """`url` without its password, and the password (None when there is none)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{hostinfo}")), unquote(parts.password)


def _repo_modules() -> None:
    """Make `services.*` importable when run as `python deploy/dbtool.py` from a plain checkout."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(1, root)


def pg_bin_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """`KITRADING_PG_BIN`, else the binaries of the `pgserver` package, else None (use PATH)."""
    source = os.environ if env is None else env
    if source.get("KITRADING_PG_BIN"):
        return Path(source["KITRADING_PG_BIN"])
    try:
        import pgserver
    except ImportError:
        return None
    candidate = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return candidate if (candidate / "pg_dump").exists() else None


def pg_tool(name: str, env: Mapping[str, str] | None = None) -> str:
    directory = pg_bin_dir(env)
    if directory is not None and (directory / name).exists():
        return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise DbToolError(f"{name} not found: install the project (pgserver) or set KITRADING_PG_BIN")
    return found


def resolve_target(*, start_embedded: bool, env: Mapping[str, str] | None = None) -> Target | None:
    """The configured database; None when none is configured and no embedded one exists yet.

    `start_embedded`: create the embedded server when it does not exist (restore onto a new machine).
    """
    _repo_modules()
    from services.runtime.database_settings import DatabaseSettings, resolve_database_url
    from services.runtime.embedded import start_embedded_postgres

    settings = DatabaseSettings.from_env(env)
    if settings.embedded:
        pgdata = settings.embedded_pgdata
        if not (pgdata / "PG_VERSION").exists() and not start_embedded:
            return None
        url = start_embedded_postgres(pgdata)  # attach, or start until this process exits
    else:
        url = asyncio.run(resolve_database_url(settings))
    bare, password = split_password(url)
    return Target(bare, password, settings.describe())


def is_reachable(target: Target, *, timeout_s: int = 5) -> bool:
    result = subprocess.run(
        [pg_tool("pg_isready"), "--quiet", f"--timeout={timeout_s}", f"--dbname={target.url}"],
        env=target.env(),
        check=False,
    )
    return result.returncode == 0


def _run(args: Sequence[str], target: Target, what: str) -> None:
    result = subprocess.run(list(args), env=target.env(), check=False)
    if result.returncode != 0:
        raise DbToolError(f"{what} failed (exit {result.returncode}) on {target.description}")


def _psql(target: Target, sql: str) -> None:
    _run(
        [pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", f"--dbname={target.url}", "-c", sql],
        target,
        sql,
    )


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def dump(target: Target, output: str) -> None:
    """pg_dump in the custom format (compressed, restorable table by table) to `output` or stdout."""
    args = [pg_tool("pg_dump"), "--format=custom", f"--dbname={target.url}"]
    if output != "-":
        args.append(f"--file={output}")
    _run(args, target, "pg_dump")


def dump_has_timescaledb(path: str, target: Target) -> bool:
    listing = subprocess.run(
        [pg_tool("pg_restore"), "--list", path], env=target.env(), capture_output=True, text=True, check=False
    )
    if listing.returncode != 0:
        raise DbToolError(f"{path} is not a pg_dump archive: {listing.stderr.strip()}")
    return any("EXTENSION" in line and "timescaledb" in line for line in listing.stdout.splitlines())


def restore(target: Target, path: str) -> None:
    """Replace the database with the dump: drop, create, (TimescaleDB pre-restore), pg_restore, post."""
    timescale = dump_has_timescaledb(path, target)
    name = target.database
    maintenance = target.with_database("template1" if name == "postgres" else "postgres")
    _psql(maintenance, f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
    _psql(maintenance, f"CREATE DATABASE {_quote_ident(name)}")
    if timescale:
        _psql(target, "CREATE EXTENSION IF NOT EXISTS timescaledb")
        _psql(target, "SELECT timescaledb_pre_restore()")
    try:
        _run(
            [
                pg_tool("pg_restore"),
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                f"--dbname={target.url}",
                path,
            ],
            target,
            "pg_restore",
        )
    finally:
        if timescale:
            _psql(target, "SELECT timescaledb_post_restore()")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbtool.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("describe", help="where the database is")
    dump_cmd = sub.add_parser("dump", help="pg_dump --format=custom")
    dump_cmd.add_argument("output", help='file, or "-" for stdout')
    restore_cmd = sub.add_parser("restore", help="recreate the database from a dump")
    restore_cmd.add_argument("input", help="a pg_dump custom-format file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "describe":
        _repo_modules()
        from services.runtime.database_settings import DatabaseSettings

        print(DatabaseSettings.from_env().describe())
        return 0
    try:
        target = resolve_target(start_embedded=args.command == "restore")
        if target is None:
            print("dbtool: no database (nothing configured, no embedded PostgreSQL yet)", file=sys.stderr)
            return NOTHING_TO_DO
        if not is_reachable(target):
            print(f"dbtool: {target.description} is not reachable", file=sys.stderr)
            return NOTHING_TO_DO if args.command == "dump" else 1
        if args.command == "dump":
            dump(target, args.output)
        else:
            restore(target, args.input)
    except (DbToolError, OSError) as exc:
        print(f"dbtool: {exc}", file=sys.stderr)
        return 1
    print(f"dbtool: {args.command} done ({target.description})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
