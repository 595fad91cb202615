"""Fixtures of the SDK and CLI tests: one real in-process DataService for the whole module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_data import FakeDataService, ServerThread


@pytest.fixture(scope="session")
def data_server_thread() -> Iterator[ServerThread]:
    server = ServerThread().start()
    yield server
    server.stop()


@pytest.fixture
def data_server(data_server_thread: ServerThread) -> Iterator[ServerThread]:
    """The shared server with fresh counters and no injected failures."""
    data_server_thread.reset()
    yield data_server_thread
    data_server_thread.reset()


@pytest.fixture
def servicer(data_server: ServerThread) -> FakeDataService:
    return data_server.servicer
