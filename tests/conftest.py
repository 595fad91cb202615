"""Shared fixtures: a real PostgreSQL for any test that needs a database, and a gRPC health server.

- `postgres` (session): one server for the whole run. Embedded (pgserver) in a temp dir, deleted at
  exit; or the server at `KITRADING_TEST_DATABASE_URL` when that is set. `stop()`/`start()` simulate
  an outage (embedded only; every pool in the session sees it, so restart before returning).
- `database_url` (per test): a fresh, empty database on that server, dropped afterwards.
- `health_server` (per test): a real gRPC server with only grpc.health.v1 on a free port, as
  (port, servicer); set statuses on the servicer.
- every test (autouse): fails if it leaves a mesh setting (`KITRADING_*`, `WATCHDOG_*`) in this process's
  environment that it did not find there; later tests would start services with it (a TLS pair left by
  one test once made two benchmarks' gateways refuse plain HTTP, far from the cause).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from services.runtime.embedded import _pgserver, ensure_embedded_running, start_embedded_postgres

#: Prefixes of the settings the services read from the environment (`services.runtime.settings`).
MESH_SETTING_PREFIXES = ("KITRADING_", "WATCHDOG_")


def _mesh_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(MESH_SETTING_PREFIXES)}


@pytest.fixture(autouse=True)
def _no_leaked_settings(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test that changes the mesh settings of this process without putting them back (code
    under test writing `os.environ` directly: monkeypatch restores only what it set itself)."""
    before = _mesh_settings()
    yield
    after = _mesh_settings()
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        os.environ.update(before)  # restore, so the next tests run on what the session started with
        for key in after.keys() - before.keys():
            del os.environ[key]
        pytest.fail(f"{request.node.nodeid} left settings changed in os.environ: {', '.join(changed)}")


@dataclass(frozen=True)
class PostgresForTests:
    """A PostgreSQL server for tests: `url` of its maintenance database, `pgdata` when embedded."""

    url: str
    pgdata: Path | None

    def database_url(self, name: str) -> str:
        """URL of database `name` on this server."""
        return urlunsplit(urlsplit(self.url)._replace(path=f"/{name}"))

    def stop(self) -> None:
        """Stop the embedded server now (fast shutdown: open connections are cut)."""
        if self.pgdata is None:
            pytest.skip("needs the embedded server")
        pgserver = _pgserver()
        server = pgserver.get_server(self.pgdata)
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=server.system_user)

    def start(self) -> None:
        """Start the embedded server again after `stop()`."""
        assert self.pgdata is not None
        ensure_embedded_running(self.pgdata)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresForTests]:
    external = os.environ.get("KITRADING_TEST_DATABASE_URL")
    if external:
        yield PostgresForTests(external, None)
        return
    # Not under pytest's basetemp: pytest keeps /tmp/pytest-of-<user> at mode 0700 (re-applied by every
    # session, including other people's), which the server's own system user cannot traverse as root.
    parent = Path(tempfile.mkdtemp(prefix="kitrading-test-pg-"))
    pgdata = parent / "pgdata"
    url = start_embedded_postgres(pgdata, cleanup_mode="delete")
    yield PostgresForTests(url, pgdata)
    _pgserver().get_server(pgdata).cleanup()  # stops the server and deletes pgdata
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
async def database_url(postgres: PostgresForTests) -> AsyncIterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield postgres.database_url(name)
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(0)
