"""The key store (hashed, 0600, never the token), the scope of each method, and who may listen where."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest

from gateway.descriptors import Contracts
from gateway.envoy_config import GatewaySettings, method_scope
from gateway.keys import KeyStore
from kitrading.mesh import SERVICES
from services.runtime.config import ConfigError


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    result: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


def test_the_store_keeps_a_hash_and_never_the_token(tmp_path: Path) -> None:
    store = KeyStore.from_env({"KITRADING_HOME": str(tmp_path)})
    assert store.api_keys() is None  # nothing created: the open loopback default
    record, token = store.create("write", name="ci")
    assert store.keys_file == tmp_path / "secrets" / "gateway_keys.json"
    text = store.keys_file.read_text()
    assert token not in text and token.split(".")[2] not in text
    assert json.loads(text)["keys"][0]["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    for path in (store.keys_file, store.signing_key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.keys_file.parent.stat().st_mode) == 0o700
    claims = _claims(token)
    assert claims["jti"] == record.id and claims["scope"] == "write" and claims["iss"] == "kitrading"
    # HS256 over the gateway's secret
    header, payload, signature = token.split(".")
    secret = store.secret()
    assert secret is not None
    expected = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    keys = store.api_keys()
    assert keys is not None and keys.revoked == ()
    assert "secret=<32 bytes>" in repr(keys)


def test_revoking_keeps_keys_required(tmp_path: Path) -> None:
    store = KeyStore.from_env({}, directory=tmp_path)
    record, _ = store.create("read")
    before = store.fingerprint()
    store.create("admin")
    assert store.fingerprint() == before  # a new key needs no new Envoy config
    store.revoke(record.id)
    keys = store.api_keys()
    assert keys is not None and keys.revoked == (record.id,)
    assert store.fingerprint() != before
    assert next(r for r in store.records() if r.id == record.id).revoked
    with pytest.raises(KeyError):
        store.revoke("k_nope")


def test_expiry_is_in_the_token(tmp_path: Path) -> None:
    record, token = KeyStore.from_env({}, directory=tmp_path).create("read", expires_in_s=3600, now=1000.0)
    assert _claims(token)["exp"] == 4600 and record.expires == 4600.0


def test_a_bad_scope_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="read, write, admin"):
        KeyStore.from_env({}, directory=tmp_path).create("root")


def test_beyond_loopback_needs_keys_or_an_explicit_opt_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kitrading keys create"):
        GatewaySettings.from_env({"KITRADING_HOME": str(tmp_path), "KITRADING_GATEWAY_BIND": "0.0.0.0"})
    KeyStore.from_env({"KITRADING_HOME": str(tmp_path)}).create("admin")
    settings = GatewaySettings.from_env(
        {"KITRADING_HOME": str(tmp_path), "KITRADING_GATEWAY_BIND": "0.0.0.0"}
    )
    assert settings.api_keys is not None and settings.listen_address == "0.0.0.0"
    assert "secret" not in repr(settings)


def test_the_store_files_can_come_from_secret_files(tmp_path: Path) -> None:
    source = KeyStore.from_env({}, directory=tmp_path / "made")
    source.create("read")
    env = {
        "KITRADING_HOME": str(tmp_path / "elsewhere"),
        "KITRADING_GATEWAY_KEYS_FILE": str(source.keys_file),
        "KITRADING_GATEWAY_SIGNING_KEY_FILE": str(source.signing_key_file),
    }
    assert GatewaySettings.from_env(env).api_keys == source.api_keys()
    (tmp_path / "made" / "gateway_signing_key").unlink()
    with pytest.raises(ConfigError, match="signing key"):
        GatewaySettings.from_env(env)


def test_writes_and_expensive_calls_need_write(contracts: Contracts) -> None:
    settings = GatewaySettings()
    scopes = {
        m.full_name: method_scope(m, settings) for s in contracts.routed_services(SERVICES) for m in s.methods
    }
    for name in (
        "kitrading.forecast.v1.ForecastService/TrainAll",
        "kitrading.data.v1.DataService/StartSync",
        "kitrading.data.v1.DataService/DeleteSymbol",
        "kitrading.llm.v1.LlmService/Analyze",
        "kitrading.llm.v1.LlmService/AnalyzeStream",
        "kitrading.rag.v1.RagService/AddDocument",
        "kitrading.watchdog.v1.WatchdogService/SendTestAlert",
        "kitrading.forecast.v1.ForecastService/RollbackModelVersion",
        "kitrading.pattern.v1.PatternService/RollbackPatternModel",
        "kitrading.regime.v1.RegimeService/RollbackRegimeModel",
    ):
        assert scopes[name] == "write", name
    for name in (
        "kitrading.data.v1.DataService/ListSymbols",
        "kitrading.data.v1.DataService/WatchEvents",
        "kitrading.forecast.v1.ForecastService/GetForecast",
        "kitrading.forecast.v1.ForecastService/BatchGetForecasts",
        "kitrading.regime.v1.RegimeService/ScoreSignal",
        "kitrading.pattern.v1.PatternService/ListPatternModelVersions",
        "kitrading.regime.v1.RegimeService/ListRegimeModelVersions",
    ):
        assert scopes[name] == "read", name
