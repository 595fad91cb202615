"""The shared migration runner (`services.runtime.database.apply_migrations`) on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from services.runtime.database import apply_migrations
from services.runtime.errors import Unavailable


def write_migrations(directory: Path, schema: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "0001_items.sql").write_text(
        f"CREATE TABLE {schema}.items (id integer PRIMARY KEY, name text NOT NULL);\n"
        f"INSERT INTO {schema}.items VALUES (1, 'first');\n"
    )
    (directory / "0002_more.sql").write_text(
        f"-- depends: 0001_items\nALTER TABLE {schema}.items ADD COLUMN note text NOT NULL DEFAULT '';\n"
    )
    return directory


async def tables(url: str, schema: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
    finally:
        await conn.close()
    return {row["table_name"] for row in rows}


async def test_applies_pending_migrations_once_with_bookkeeping_in_the_schema(
    database_url: str, tmp_path: Path
) -> None:
    directory = write_migrations(tmp_path / "one", "one")
    assert await apply_migrations(database_url, directory, schema="one") == ["0001_items", "0002_more"]
    assert await apply_migrations(database_url, directory, schema="one") == []
    assert {"items", "_yoyo_migration", "yoyo_lock"} <= await tables(database_url, "one")
    assert not await tables(database_url, "public")  # nothing of ours or yoyo's outside the schema

    # a second service's schema in the same database has its own bookkeeping
    other = write_migrations(tmp_path / "two", "two")
    assert await apply_migrations(database_url, other, schema="two") == ["0001_items", "0002_more"]
    (directory / "0003_later.sql").write_text("CREATE TABLE one.later (id integer);\n")
    assert await apply_migrations(database_url, directory, schema="one") == ["0003_later"]


async def test_concurrent_migrators_apply_each_migration_once(database_url: str, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "m", "con")
    results = await asyncio.gather(
        *(apply_migrations(database_url, directory, schema="con") for _ in range(3))
    )
    assert sorted(results, key=len) == [[], [], ["0001_items", "0002_more"]]
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM con.items") == 1
    finally:
        await conn.close()


async def test_a_lock_row_left_by_a_dead_migrator_does_not_block(database_url: str, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "m", "stale")
    assert await apply_migrations(database_url, directory, schema="stale")
    conn = await asyncpg.connect(database_url)
    try:  # what yoyo leaves behind when its process is killed while migrating
        await conn.execute("INSERT INTO stale.yoyo_lock (locked, ctime, pid) VALUES (1, now(), 999999)")
    finally:
        await conn.close()
    (directory / "0003_later.sql").write_text("CREATE TABLE stale.later (id integer);\n")
    started = time.monotonic()
    assert await apply_migrations(database_url, directory, schema="stale", timeout_s=20) == ["0003_later"]
    assert time.monotonic() - started < 10


async def test_versions_of_a_legacy_runner_are_marked_applied_not_run(
    database_url: str, tmp_path: Path
) -> None:
    directory = write_migrations(tmp_path / "m", "old")
    conn = await asyncpg.connect(database_url)
    try:  # a database migrated by a hand-written runner that recorded 0001 in its own table
        await conn.execute(
            "CREATE SCHEMA old; CREATE TABLE old.versions (version text PRIMARY KEY);"
            "INSERT INTO old.versions VALUES ('0001_items');"
            "CREATE TABLE old.items (id integer PRIMARY KEY, name text NOT NULL);"
            "INSERT INTO old.items VALUES (1, 'kept'), (2, 'kept too');"
        )
        applied = await apply_migrations(database_url, directory, schema="old", legacy_table="versions")
        assert applied == ["0002_more"]  # 0001 (CREATE TABLE, INSERT) would fail or duplicate if run
        assert await conn.fetchval("SELECT count(*) FROM old.items") == 2
        assert await apply_migrations(database_url, directory, schema="old", legacy_table="versions") == []
    finally:
        await conn.close()
    # legacy_table named but absent (a fresh database): everything is applied
    fresh = write_migrations(tmp_path / "f", "fresh")
    assert await apply_migrations(database_url, fresh, schema="fresh", legacy_table="versions") == [
        "0001_items",
        "0002_more",
    ]


async def test_an_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "m", "x")
    with pytest.raises(Unavailable) as failed:
        await apply_migrations("postgresql://postgres@127.0.0.1:1/none", directory, schema="x")
    assert failed.value.reason == "DATABASE_UNAVAILABLE"
