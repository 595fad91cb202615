"""TLS at the gateway and CORS: the settings, the bootstrap, `kitrading up --tls`, and a real Envoy
serving TLS (self-signed pair from `kitrading up --tls`'s generator) in front of the fake DataService:
HTTP/1.1 and HTTP/2 JSON, native gRPC (raw channel, the SDK, grpcurl), grpc-web, plain HTTP refused;
CORS preflight and actual requests from an allowed origin, nothing for others or without origins."""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio

from bench._mesh import free_port
from gateway.__main__ import main as gateway_main
from gateway.descriptors import Contracts
from gateway.envoy_config import (
    CORS,
    CORS_ORIGINS,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    GatewaySettings,
    parse_origins,
)
from gateway.run import build_config, start_envoy, stop_envoy, write_config
from kitrading.cli.commands import up
from kitrading.cli.main import main as cli_main
from kitrading.client import connect, connect_async
from kitrading.mesh import SERVICES
from services.runtime.config import ConfigError
from tests.e2e.mesh import grpcurl_path

from .conftest import Gateway
from .fake_data import SERVICE as DATA_SERVICE
from .fake_data import DataMessages, start_server

LIST_SYMBOLS = "/kitrading.data.v1.DataService/ListSymbols"
ALLOWED = "https://app.example.com"
OTHER = "https://evil.example"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return up.self_signed_pair(tmp_path_factory.mktemp("tls") / "tls")


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return typed


# ---- settings and bootstrap (no Envoy) ----


def test_tls_settings_from_env_give_a_tls_listener(
    pair: tuple[Path, Path], descriptor_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = pair
    monkeypatch.chdir(tmp_path)
    settings = GatewaySettings.from_env({TLS_CERT_FILE: str(cert), TLS_KEY_FILE: str(key)})
    assert (settings.tls_cert_file, settings.tls_key_file) == (str(cert), str(key))
    config = build_config(settings, descriptor_path=descriptor_path)
    (chain,) = config["static_resources"]["listeners"][0]["filter_chains"]
    socket = chain["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    common = socket["typed_config"]["common_tls_context"]
    assert common["alpn_protocols"] == ["h2", "http/1.1"]
    (certificate,) = common["tls_certificates"]
    # by path: Envoy reads the files, the key is never copied into the bootstrap
    assert certificate == {
        "certificate_chain": {"filename": str(cert)},
        "private_key": {"filename": str(key)},
    }
    assert "PRIVATE KEY" not in str(config)
    # a relative path from the environment is made absolute (Envoy may run elsewhere)
    (tmp_path / "c.pem").write_text(cert.read_text())
    (tmp_path / "k.pem").write_text(key.read_text())
    relative = GatewaySettings.from_env({TLS_CERT_FILE: "c.pem", TLS_KEY_FILE: "k.pem"})
    assert relative.tls_cert_file == str(tmp_path / "c.pem")


def test_without_tls_settings_the_listener_is_plain(descriptor_path: Path) -> None:
    config = build_config(GatewaySettings(port=13000), descriptor_path=descriptor_path)
    assert "transport_socket" not in config["static_resources"]["listeners"][0]["filter_chains"][0]


@pytest.mark.parametrize(
    ("given", "named"),
    [(TLS_CERT_FILE, TLS_KEY_FILE), (TLS_KEY_FILE, TLS_CERT_FILE)],
)
def test_half_a_tls_setting_is_refused(pair: tuple[Path, Path], given: str, named: str) -> None:
    path = pair[0] if given == TLS_CERT_FILE else pair[1]
    with pytest.raises(ConfigError) as error:
        GatewaySettings.from_env({given: str(path)})
    assert f"{given} is set but {named} is not" in str(error.value)


def test_missing_unreadable_or_wrong_files_are_refused_naming_the_setting(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = pair
    cases = [
        ({TLS_CERT_FILE: str(tmp_path / "nope.crt"), TLS_KEY_FILE: str(key)}, TLS_CERT_FILE, "no such file"),
        ({TLS_CERT_FILE: str(cert), TLS_KEY_FILE: str(tmp_path / "nope.key")}, TLS_KEY_FILE, "no such file"),
        ({TLS_CERT_FILE: str(tmp_path), TLS_KEY_FILE: str(key)}, TLS_CERT_FILE, "cannot be read"),
        # swapped: the key is no certificate, the certificate no key
        ({TLS_CERT_FILE: str(key), TLS_KEY_FILE: str(cert)}, TLS_CERT_FILE, "not a PEM certificate"),
        ({TLS_CERT_FILE: str(cert), TLS_KEY_FILE: str(cert)}, TLS_KEY_FILE, "not a PEM private key"),
    ]
    for env, setting, message in cases:
        with pytest.raises(ConfigError) as error:
            GatewaySettings.from_env(env)
        text = str(error.value)
        assert text.startswith(f"{setting}=") and message in text, (env, text)


def test_python_m_gateway_refuses_a_bad_tls_setting(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TLS_CERT_FILE, str(pair[0]))
    monkeypatch.delenv(TLS_KEY_FILE, raising=False)
    assert gateway_main(["--print-config"]) == 2
    assert f"{TLS_KEY_FILE} is not" in capsys.readouterr().err


def test_validate_a_tls_and_cors_bootstrap_with_the_real_envoy(
    pair: tuple[Path, Path],
    descriptor_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TLS_CERT_FILE, str(pair[0]))
    monkeypatch.setenv(TLS_KEY_FILE, str(pair[1]))
    monkeypatch.setenv(CORS_ORIGINS, f"{ALLOWED}, http://localhost:5173")
    assert gateway_main(["--validate", "--descriptors", str(descriptor_path), "--port", "13000"]) == 0
    assert "OK" in capsys.readouterr().out


def test_cors_origins_are_parsed_strictly() -> None:
    assert parse_origins(" https://App.Example.com/, http://localhost:5173 http://[::1]:8080,") == (
        "https://app.example.com",
        "http://localhost:5173",
        "http://[::1]:8080",
    )
    for bad in ("*", "null", "app.example.com", "https://app.example.com/path", "ftp://x"):
        with pytest.raises(ConfigError) as error:
            parse_origins(bad)
        assert CORS_ORIGINS in str(error.value)
    with pytest.raises(ConfigError):
        GatewaySettings(cors_allowed_origins=("*",))
    assert GatewaySettings(cors_allowed_origins=("HTTPS://A.example/",)).cors_allowed_origins == (
        "https://a.example",
    )


def test_cors_filter_first_and_a_policy_only_with_origins(descriptor_path: Path) -> None:
    plain = _hcm(build_config(GatewaySettings(port=13000), descriptor_path=descriptor_path))
    assert plain["http_filters"][0]["name"] == CORS
    (vhost,) = plain["route_config"]["virtual_hosts"]
    assert CORS not in vhost.get("typed_per_filter_config", {})
    settings = GatewaySettings.from_env({CORS_ORIGINS: ALLOWED}, port=13000)
    hcm = _hcm(build_config(settings, descriptor_path=descriptor_path))
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    policy = vhost["typed_per_filter_config"][CORS]
    assert policy["allow_origin_string_match"] == [{"exact": ALLOWED}]
    assert "x-api-key" in policy["allow_headers"] and "content-type" in policy["allow_headers"]
    assert "grpc-status" in policy["expose_headers"] and "grpc-message" in policy["expose_headers"]
    assert policy["allow_credentials"] is False


# ---- kitrading up --tls ----


def test_up_tls_makes_a_pair_sets_the_gateway_settings_and_prints_https_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys
    import types

    seen: list[dict[str, str]] = []

    async def run_mesh(only: list[str] | None = None, *, gateway: bool = True) -> None:
        seen.append(dict(os.environ))
        GatewaySettings.from_env()  # what the launcher checks first: the pair must pass

    fake = types.ModuleType("services.launcher.mesh")
    fake.run_mesh = run_mesh  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "services.launcher.mesh", fake)
    monkeypatch.setenv("KITRADING_HOME", str(tmp_path))
    monkeypatch.setenv("KITRADING_GATEWAY_PORT", "3443")
    for name in (TLS_CERT_FILE, TLS_KEY_FILE, "WATCHDOG_GATEWAY_HEALTH_URL", "KITRADING_GATEWAY_ADMIN_PORT"):
        # set first, so monkeypatch records what was there and removes what `up --tls` writes
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    assert cli_main(["up", "--tls"]) == 0
    cert, key = tmp_path / "tls" / "gateway.crt", tmp_path / "tls" / "gateway.key"
    env = seen[0]
    assert (env[TLS_CERT_FILE], env[TLS_KEY_FILE]) == (str(cert), str(key))
    assert env["WATCHDOG_GATEWAY_HEALTH_URL"] == "http://127.0.0.1:9901/ready"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-subject", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CN = localhost" in text and "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    out = capsys.readouterr().out
    assert "https://localhost:3443/" in out
    assert f"curl --cacert {cert} https://localhost:3443/gateway/health" in out
    assert f"grpcurl -cacert {cert} localhost:3443" in out
    assert f"export KITRADING_TLS_CA={cert}" in out
    # a second start keeps the pair (clients that trust it keep working)
    before = cert.read_bytes()
    assert cli_main(["up", "--tls"]) == 0
    assert cert.read_bytes() == before
    assert cli_main(["up", "--tls", "--no-gateway"]) == 2


def test_up_refuses_half_a_tls_setting_naming_it(
    pair: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real launcher: the gateway's settings are checked before anything starts."""
    monkeypatch.setenv("KITRADING_HOME", str(tmp_path))
    monkeypatch.setenv(TLS_KEY_FILE, str(pair[1]))
    monkeypatch.delenv(TLS_CERT_FILE, raising=False)
    assert cli_main(["up", "--only", "data"]) == 2
    assert f"kitrading up: {TLS_KEY_FILE} is set but {TLS_CERT_FILE} is not" in capsys.readouterr().err


def test_the_launcher_prints_https_and_checks_a_tls_gateway_on_its_admin_ready(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Set by `up --tls` or by hand, TLS changes every URL the launcher prints, the watchdog's probe
    and the check after a gateway restart (a key revoked) to ones that work against the pair."""
    from kitrading.mesh import service
    from services.launcher.mesh import build_children, gateway_ready_url, print_urls

    data = [service("data"), service("watchdog")]
    plain = {"KITRADING_GATEWAY_PORT": "3443", "KITRADING_GATEWAY_ADMIN_PORT": "9911"}
    tls = {**plain, TLS_CERT_FILE: str(pair[0]), TLS_KEY_FILE: str(pair[1])}
    print_urls(data, gateway=True, env=tls)
    out = capsys.readouterr().out
    assert "gateway    https://localhost:3443/" in out and "docs https://localhost:3443/data/docs" in out
    assert "http://" not in out
    print_urls(data, gateway=True, env=plain)
    assert "gateway    http://localhost:3443/" in capsys.readouterr().out
    assert gateway_ready_url(tls) == "http://127.0.0.1:9911/ready"
    assert gateway_ready_url(plain) == "http://127.0.0.1:3443/gateway/health"
    children = {c.name: c for c in build_children(data, tmp_path, dict(tls), gateway=True)}
    assert children["watchdog"].env["WATCHDOG_GATEWAY_HEALTH_URL"] == "http://127.0.0.1:9911/ready"
    children = {c.name: c for c in build_children(data, tmp_path, dict(plain), gateway=True)}
    assert children["watchdog"].env["WATCHDOG_GATEWAY_HEALTH_URL"] == "http://127.0.0.1:3443/gateway/health"


# ---- a real Envoy serving TLS ----


@dataclass
class TlsGateway:
    port: int
    cert: Path
    base_url: str
    log: Path

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=str(self.cert))
        return httpx.AsyncClient(base_url=self.base_url, verify=context, timeout=10.0, **kwargs)


async def _wait_https(url: str, cert: Path, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(cert)), timeout=1.0) as client:
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s")
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="module")
async def tls_gateway(
    contracts: Contracts,
    descriptor_path: Path,
    pair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[TlsGateway]:
    """Envoy with TLS and one allowed CORS origin, the fake DataService behind it."""
    cert, key = pair
    data_server, data_port, _ = await start_server(contracts, [DATA_SERVICE, ""])
    ports = {s.name: free_port() for s in SERVICES}
    ports["data"] = data_port
    settings = GatewaySettings(
        port=free_port(),
        admin_port=free_port(),
        service_ports=ports,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        cors_allowed_origins=(ALLOWED,),
    )
    folder = tmp_path_factory.mktemp("envoy-tls")
    config_path = write_config(folder / "envoy.yaml", build_config(settings, descriptor_path=descriptor_path))
    log_path = folder / "envoy.log"
    with log_path.open("wb") as log:
        process = start_envoy(config_path, concurrency=2, stdout=log, stderr=subprocess.STDOUT)
    try:
        base_url = f"https://localhost:{settings.port}"
        await _wait_https(f"{base_url}/data/health", cert)
        yield TlsGateway(settings.port, cert, base_url, log_path)
    finally:
        stop_envoy(process)
        await data_server.stop(0)


async def test_http1_json_over_https(tls_gateway: TlsGateway) -> None:
    async with tls_gateway.client() as client:
        response = await client.get("/api/v1/symbols", params={"pageSize": 2})
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert [s["symbol"] for s in response.json()["symbols"]] == ["EURUSD", "GBPUSD"]


async def test_http2_json_over_https_via_alpn(tls_gateway: TlsGateway) -> None:
    async with tls_gateway.client(http2=True) as client:
        response = await client.get("/api/v1/symbols", params={"pageSize": 1})
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert len(response.json()["symbols"]) == 1


async def test_https_by_ip_address_matches_the_san(tls_gateway: TlsGateway) -> None:
    context = ssl.create_default_context(cafile=str(tls_gateway.cert))
    async with httpx.AsyncClient(verify=context, timeout=10.0) as client:
        response = await client.get(f"https://127.0.0.1:{tls_gateway.port}/gateway/health")
    assert response.status_code == 200


async def test_an_untrusted_client_is_refused(tls_gateway: TlsGateway) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:  # the system's roots: self-signed is unknown
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"{tls_gateway.base_url}/gateway/health")


async def test_plain_http_to_the_tls_port_fails(tls_gateway: TlsGateway) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(f"http://127.0.0.1:{tls_gateway.port}/gateway/health")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_gateway.port}") as channel:
        call = channel.unary_unary(LIST_SYMBOLS, request_serializer=bytes, response_deserializer=bytes)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(b"", timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_native_grpc_over_tls(tls_gateway: TlsGateway, contracts: Contracts) -> None:
    m = DataMessages(contracts)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_gateway.cert.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{tls_gateway.port}", credentials) as channel:
        list_symbols = channel.unary_unary(
            LIST_SYMBOLS,
            request_serializer=m.ListSymbolsRequest.SerializeToString,
            response_deserializer=m.ListSymbolsResponse.FromString,
        )
        response = await list_symbols(m.ListSymbolsRequest(prefix="G"), timeout=5)
    assert [s.symbol for s in response.symbols] == ["GBPUSD", "GOOG"]


async def test_the_sdk_over_tls(tls_gateway: TlsGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    target = f"localhost:{tls_gateway.port}"
    async with connect_async(target, tls_ca=tls_gateway.cert, retries=False) as client:
        reply = await client.data.list_symbols(timeout=5)
        assert [s.symbol for s in reply.symbols][:2] == ["EURUSD", "GBPUSD"]
        # the gateway does not route grpc.health: the SDK falls back to /data/health, over https
        assert (await client.health("data", timeout=5)).value == "SERVING"
    # from the environment, as `kitrading up --tls` prints it; blocking client, by IP address
    monkeypatch.setenv("KITRADING_TLS_CA", str(tls_gateway.cert))

    def blocking() -> None:
        with connect(f"127.0.0.1:{tls_gateway.port}", retries=False) as sync:
            assert sync.tls and sync.tls_ca == tls_gateway.cert
            assert len(sync.data.list_symbols(timeout=5).symbols) >= 2
            assert sync.health("data", timeout=5).value == "SERVING"
        # tls_ca=False: plaintext whatever the environment says, which this port refuses
        with connect(target, retries=False, tls_ca=False) as plain:
            assert not plain.tls
            with pytest.raises(Exception, match=r"(?i)unavailable"):
                plain.data.list_symbols(timeout=5)

    await asyncio.to_thread(blocking)


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([grpcurl_path(), *args], capture_output=True, text=True, timeout=30, check=False)


async def test_grpcurl_over_tls(tls_gateway: TlsGateway, descriptor_path: Path) -> None:
    target = f"localhost:{tls_gateway.port}"
    call = ["-protoset", str(descriptor_path), "-d", '{"pageSize": 1}', target, LIST_SYMBOLS.lstrip("/")]
    done = await asyncio.to_thread(_grpcurl, "-cacert", str(tls_gateway.cert), *call)
    assert done.returncode == 0, done.stderr
    assert '"symbol": "EURUSD"' in done.stdout
    untrusted = await asyncio.to_thread(_grpcurl, *call)
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr
    plain = await asyncio.to_thread(_grpcurl, "-plaintext", *call)
    assert plain.returncode != 0


def _grpc_web_frame(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


async def test_grpc_web_over_tls_from_an_allowed_origin(
    tls_gateway: TlsGateway, contracts: Contracts
) -> None:
    m = DataMessages(contracts)
    body = _grpc_web_frame(m.ListSymbolsRequest(page_size=1).SerializeToString())
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "origin": ALLOWED}
    async with tls_gateway.client() as client:
        response = await client.post(LIST_SYMBOLS, content=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/grpc-web")
    assert response.headers["access-control-allow-origin"] == ALLOWED
    exposed = response.headers["access-control-expose-headers"]
    assert "grpc-status" in exposed and "grpc-message" in exposed


# ---- CORS ----


def _preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": "content-type,x-api-key",
    }


async def test_preflight_from_an_allowed_origin(tls_gateway: TlsGateway) -> None:
    async with tls_gateway.client() as client:
        response = await client.options("/api/v1/symbols", headers=_preflight(ALLOWED))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    methods = response.headers["access-control-allow-methods"]
    assert all(verb in methods for verb in ("GET", "POST", "PATCH", "DELETE"))
    allowed = response.headers["access-control-allow-headers"]
    assert "content-type" in allowed and "x-api-key" in allowed
    assert response.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in response.headers


async def test_actual_requests_from_an_allowed_origin_get_the_headers(tls_gateway: TlsGateway) -> None:
    async with tls_gateway.client() as client:
        response = await client.get("/api/v1/symbols", headers={"origin": ALLOWED})
        error = await client.get("/api/v1/symbols", params={"bogus": 1}, headers={"origin": ALLOWED})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "grpc-status" in response.headers["access-control-expose-headers"]
    # the gateway's own answers too, so the page can read the error
    assert error.status_code == 400
    assert error.headers["access-control-allow-origin"] == ALLOWED


async def test_other_origins_get_no_cors_headers(tls_gateway: TlsGateway) -> None:
    async with tls_gateway.client() as client:
        preflight = await client.options("/api/v1/symbols", headers=_preflight(OTHER))
        actual = await client.get("/api/v1/symbols", headers={"origin": OTHER})
    assert preflight.status_code >= 400
    assert actual.status_code == 200  # a browser would not let the page read it
    for response in (preflight, actual):
        assert not [h for h in response.headers if h.startswith("access-control-")], response.headers


async def test_without_configured_origins_no_cross_origin_access(gateway: Gateway) -> None:
    """The default gateway (no `KITRADING_GATEWAY_CORS_ORIGINS`): even a well-meant origin gets
    nothing, and the dashboard's own origin works as same-origin requests always do."""
    async with gateway.client() as client:
        preflight = await client.options("/api/v1/symbols", headers=_preflight(ALLOWED))
        actual = await client.get("/api/v1/symbols", headers={"origin": ALLOWED})
        same = await client.patch(
            "/api/v1/symbols/EURUSD", json={"description": "x"}, headers={"origin": gateway.base_url}
        )
        page = await client.get("/", headers={"origin": gateway.base_url})
    assert preflight.status_code >= 400
    for response in (preflight, actual, same, page):
        assert not [h for h in response.headers if h.startswith("access-control-")], response.headers
    assert page.status_code == 200
    assert same.status_code == 200, same.text


async def test_the_cors_route_never_forwards(tls_gateway: TlsGateway) -> None:
    """With origins configured, an `Origin` request no other route takes meets the CORS route: still
    404 (UNKNOWN_PATH), and a client cannot choose its cluster (that header's name is refused)."""
    async with tls_gateway.client() as client:
        unknown = await client.get("/api/v1/no-such-thing", headers={"origin": ALLOWED})
        forced = await client.get(
            "/api/v1/no-such-thing", headers={"origin": ALLOWED, "kitrading!no-cluster": "data"}
        )
    assert unknown.status_code == 404
    assert unknown.json()["details"][0]["reason"] == "UNKNOWN_PATH"
    assert unknown.headers["access-control-allow-origin"] == ALLOWED
    assert forced.status_code == 400
