"""`kitrading keys` against a temp home, and a revocation applied to a running gateway: the launcher's
key watcher rebuilds Envoy's config and restarts it under the supervisor, as `kitrading up` does."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from bench._mesh import free_port
from gateway.descriptors import Contracts
from gateway.envoy_config import GatewaySettings
from gateway.keys import KeyStore
from gateway.run import envoy_binary, write_config
from kitrading.cli.main import main
from kitrading.mesh import SERVICES
from services.launcher.mesh import watch_keys
from services.launcher.supervisor import Child, Supervisor

from .fake_data import SERVICE as DATA_SERVICE
from .fake_data import start_server


def test_create_list_revoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KITRADING_HOME", str(tmp_path))
    monkeypatch.delenv("KITRADING_GATEWAY_KEYS_FILE", raising=False)
    monkeypatch.delenv("KITRADING_GATEWAY_SIGNING_KEY_FILE", raising=False)
    assert main(["keys", "list"]) == 0
    assert "no API keys" in capsys.readouterr().out

    assert main(["keys", "create", "--scope", "write", "--name", "ci", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["scope"] == "write" and created["id"].startswith("k_")
    token = created["key"]
    assert main(["keys", "create", "--scope", "read"]) == 0
    out = capsys.readouterr().out
    assert "shown only now" in out and "KITRADING_API_KEY" in out

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert created["id"] in listing and "ci" in listing and "active" in listing
    assert token not in listing
    assert token not in (tmp_path / "secrets" / "gateway_keys.json").read_text()

    assert main(["keys", "revoke", created["id"]]) == 0
    assert "restarts the gateway" in capsys.readouterr().out
    assert main(["keys", "list", "--json"]) == 0
    records = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert records[created["id"]]["revoked"] is True
    assert main(["keys", "revoke", created["id"], "--json"]) == 0  # again: nothing changes
    assert json.loads(capsys.readouterr().out) == records[created["id"]]
    assert main(["keys", "revoke", "k_000000000000"]) == 2
    assert "no key" in capsys.readouterr().err
    assert main(["keys", "create", "--scope", "root"]) == 2  # the parser refuses it
    assert "Invalid value for '--scope'" in capsys.readouterr().err


def test_the_sdk_sends_the_key_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kitrading.client.client import api_key_from_env, with_api_key

    assert api_key_from_env({}) is None
    assert api_key_from_env({"KITRADING_API_KEY": " abc \n"}) == "abc"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert api_key_from_env({"KITRADING_API_KEY_FILE": str(key_file)}) == "from-file"
    monkeypatch.setenv("KITRADING_API_KEY", "k1")
    assert with_api_key(None, None) == [("x-api-key", "k1")]
    assert with_api_key([("x-api-key", "mine")], None) == [("x-api-key", "mine")]
    assert with_api_key([("a", "b")], "given") == [("a", "b"), ("x-api-key", "given")]


async def test_a_revocation_reaches_a_running_gateway(
    contracts: Contracts, descriptor_path: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    store = KeyStore.from_env({"KITRADING_HOME": str(home)})
    record, token = store.create("read")
    data_server, data_port, _ = await start_server(contracts, [DATA_SERVICE, ""])
    port, admin = free_port(), free_port()
    env = {
        "KITRADING_HOME": str(home),
        "KITRADING_GATEWAY_PORT": str(port),
        "KITRADING_GATEWAY_ADMIN_PORT": str(admin),
        **{f"KITRADING_{s.name.upper()}_PORT": str(free_port()) for s in SERVICES},
        "KITRADING_DATA_PORT": str(data_port),
    }
    assert GatewaySettings.from_env(env).api_keys is not None
    config = write_config(home / "run" / "envoy.yaml", env=env)  # as the launcher writes it
    argv = [
        envoy_binary(),
        "-c",
        str(config),
        "--log-level",
        "warning",
        "--disable-hot-restart",
        "--concurrency",
        "1",
    ]
    supervisor = Supervisor(
        [Child("gateway", argv, {}, home / "logs" / "gateway.log")], state_file=home / "mesh.json"
    )
    url = f"http://127.0.0.1:{port}/api/v1/symbols"

    async def status() -> int:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(url, headers={"x-api-key": token})).status_code
        except httpx.HTTPError:
            return 0

    async def until(code: int, within_s: float) -> float:
        started = time.monotonic()
        while (got := await status()) != code:
            assert time.monotonic() - started < within_s, f"still {got}, not {code}"
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    await supervisor.start()
    watcher = asyncio.create_task(watch_keys(supervisor, config, env, period_s=0.2))
    try:
        await until(200, 20)
        store.create("write")  # a new key changes nothing Envoy checks: no restart
        await asyncio.sleep(1)
        assert supervisor.children["gateway"].planned_restarts == 0
        store.revoke(record.id)
        took = await until(401, 30)
        assert supervisor.children["gateway"].planned_restarts == 1
        assert supervisor.children["gateway"].restarts == 0  # not counted as a crash
        assert took < 15
    finally:
        watcher.cancel()
        await supervisor.stop()
        await data_server.stop(0)
