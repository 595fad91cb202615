"""Hand-made hostile HTTP against the real gateway and the real Data service (`kitrading up --only data`).

Oversized and deeply nested JSON, invalid UTF-8 and NUL bytes, path traversal and SQL-looking names,
absurd numbers in every numeric query parameter, forged page tokens, wrong methods and content
types. Each answer must be a 4xx with a google.rpc.Status body (naming the field where there is
one), never a 5xx; afterwards the service is healthy, its tables intact, and its log has no
traceback.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.mesh import RunningMesh, running_mesh

pytestmark = pytest.mark.e2e

NUMERIC_QUERIES = {
    "/api/v1/symbols": ["pageSize"],
    "/api/v1/strategies": ["pageSize"],
    "/api/v1/symbols/EURUSD/candles": ["pageSize"],
    "/api/v1/sync/jobs": ["pageSize"],
    "/api/v1/query-logs": ["pageSize"],
    "/api/v1/events": ["pageSize", "afterEventId"],
}
ABSURD = ["-1", "-2147483649", "1000000000000", "99999999999999999999999", "1e3", "0x10", "NaN", "abc", ""]
PAGED = ["/api/v1/symbols", "/api/v1/strategies", "/api/v1/sync/jobs", "/api/v1/query-logs", "/api/v1/events"]
FORGED_TOKENS = [
    "garbage",
    base64.urlsafe_b64encode(b'{"k":"symbols","v":["ZZZ"]}').decode(),
    base64.urlsafe_b64encode(b"\x00\xff" * 40).decode(),
    "A" * 600,
    "../../etc/passwd",
    "' OR 1=1 --",
]
NAMES = [
    "..%2F..%2Fetc%2Fpasswd",
    "%2E%2E",
    "EURUSD'%3B DROP TABLE data.symbols%3B--",
    "EURUSD%22 OR %221%22=%221",
    "%00",
    "EUR%00USD",
    "EUR%zzUSD",
    "EUR%2",
    "a" * 300,
    "%F0%9F%92%A9",
]


@pytest.fixture(scope="module")
def up() -> Iterator[RunningMesh]:
    with running_mesh("hostile", ["data"], {"KITRADING_DATA_IMPORT_SAMPLES": "true"}) as running:
        running.wait_healthy("data", timeout_s=180)
        running.wait_for_samples()
        yield running


@pytest.fixture(scope="module")
def client(up: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=up.gateway, timeout=30.0) as c:
        yield c


def _rejected(response: httpx.Response, *statuses: int, field: str | None = None) -> dict[str, object]:
    """A 4xx (one of `statuses` when given) with a google.rpc.Status body whose message says what is
    wrong; the field named if given."""
    what = f"{response.request.method} {response.request.url.raw_path.decode()}"
    assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:500])
    if statuses:
        assert response.status_code in statuses, (what, response.status_code, response.text[:500])
    body = response.json()
    assert isinstance(body.get("code"), int) and body.get("message"), (what, body)
    if field is not None:
        assert field in json.dumps(body), (field, body)
    assert "Traceback" not in response.text and "google.protobuf" not in response.text
    return dict(body)


def test_absurd_numbers_in_every_numeric_query_parameter(client: httpx.Client) -> None:
    for path, names in NUMERIC_QUERIES.items():
        for name in names:
            for value in ABSURD:
                if value == "":
                    continue
                response = client.get(path, params={name: value, "timeframe": "TIMEFRAME_H1"})
                if response.status_code == 200:  # a value the type accepts and the range allows
                    assert value in ("1e3",) and name != "pageSize", (path, name, value)
                    continue
                _rejected(response, 400)


def test_forged_page_tokens_are_400_naming_the_token(client: httpx.Client) -> None:
    for path in PAGED:
        for token in FORGED_TOKENS:
            _rejected(client.get(path, params={"pageToken": token}), 400, field="page")


def test_path_traversal_sql_and_odd_names_are_4xx(client: httpx.Client, up: RunningMesh) -> None:
    for name in NAMES:
        for method, path in (
            ("GET", f"/api/v1/symbols/{name}"),
            ("GET", f"/api/v1/symbols/{name}/candles?timeframe=TIMEFRAME_H1"),
            ("DELETE", f"/api/v1/symbols/{name}"),
            ("GET", f"/api/v1/strategies/{name}"),
        ):
            response = client.request(method, path)
            _rejected(response, 400, 404)
    # the tables survived the SQL-looking names
    assert client.get("/api/v1/symbols/EURUSD").status_code == 200


def test_bodies_with_nul_bad_utf8_deep_nesting_or_excess_size(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    nul = client.post("/api/v1/symbols", json={"symbol": "NULTEST", "description": "a\u0000b"})
    _rejected(nul, 400, field="description")
    bad_utf8 = client.post(
        "/api/v1/symbols", content=b'{"symbol": "UTF", "description": "\xff\xfe"}', headers=headers
    )
    _rejected(bad_utf8, 400)
    nested: object = 1
    for _ in range(200):
        nested = {"a": nested}
    deep = client.post("/api/v1/strategies", json={"strategyId": "deep", "parameters": nested})
    _rejected(deep, 400)
    array_deep = client.post(
        "/api/v1/strategies", content=b'{"parameters": ' + b"[" * 5000 + b"]" * 5000 + b"}", headers=headers
    )
    _rejected(array_deep, 400)
    big = client.post(
        "/api/v1/symbols",
        content=b'{"symbol": "BIG", "description": "' + b"x" * (9 << 20) + b'"}',
        headers=headers,
    )
    _rejected(big, 413)
    not_json = client.post("/api/v1/symbols", content=b"{not json", headers=headers)
    _rejected(not_json, 400)
    unknown_type = client.post("/api/v1/symbols", json={"symbol": 12345})
    _rejected(unknown_type, 400)


def test_wrong_methods_and_content_types(client: httpx.Client) -> None:
    _rejected(client.put("/api/v1/symbols/EURUSD", json={}), 405)
    _rejected(client.delete("/api/v1/symbols"), 405)
    _rejected(
        client.post("/api/v1/symbols", content=b"symbol=X", headers={"content-type": "text/plain"}), 415
    )
    _rejected(
        client.post(
            "/api/v1/symbols",
            content=b"symbol=X",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        415,
    )


def test_afterwards_the_service_is_healthy_and_logged_no_traceback(
    client: httpx.Client, up: RunningMesh
) -> None:
    assert client.get("/data/health").status_code == 200
    assert client.get("/api/v1/symbols", params={"pageSize": 5}).status_code == 200
    log = up.log("data")
    assert "Traceback" not in log, log[log.find("Traceback") - 500 : log.find("Traceback") + 2000]
    assert up.state()["children"]["data"]["restarts"] == 0
