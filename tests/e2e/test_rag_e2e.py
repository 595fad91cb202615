"""The embedder and the knowledge base end to end, as a new user meets them: `kitrading up` with data,
embedder, rag and the LLM analyst (Envoy in front, the embedded PostgreSQL, the bundled models).

Both services answer their health checks; the knowledge base is not empty on first start (the mesh's
own docs); embeddings and sentiment answer over HTTP; `kitrading rag add` of a markdown file through
the gateway and a query find it; `kitrading analyze` grounds its answer in the knowledge base and
names the passages it used by title and document id, over SSE as well.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.mesh import RunningMesh, start_mesh

pytestmark = pytest.mark.e2e

NOTE = """# EURUSD desk note: the 1.0650 floor

The euro has found support at 1.0650 three times this quarter. Our desk treats a daily close below
1.0650 as the end of the range and a move towards 1.0500.
"""


def get(mesh: RunningMesh, path: str, **params: Any) -> dict[str, Any]:
    reply = httpx.get(f"{mesh.gateway}{path}", params=params, timeout=60)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    home = Path(tmp_path_factory.mktemp("rag-mesh"))
    running = start_mesh(home, ["data", "embedder", "rag", "llm"], {})
    try:
        running.wait_healthy("data")
        running.wait_healthy("embedder")
        running.wait_healthy("rag")
        running.wait_healthy("llm")
        yield running
    finally:
        code = running.stop()
        print((home / "up.log").read_text(errors="replace")[-2000:])
        print(running.log("rag")[-4000:])
        assert code == 0, f"kitrading up exited with {code}"


def test_health_embeddings_sentiment_and_the_mesh_docs(mesh: RunningMesh) -> None:
    for prefix in ("embedder", "rag"):
        assert httpx.get(f"{mesh.gateway}/{prefix}/health", timeout=10).status_code == 200
    # docs/models.md, patterns.md ... ingested once the embedder answers (it loads its model first)
    deadline = time.monotonic() + 120
    while (status := get(mesh, "/api/v1/rag/status"))["documents"] < 5:
        assert time.monotonic() < deadline, status
        time.sleep(1)
    listed = get(mesh, "/api/v1/rag/documents", pageSize=100)["documents"]
    assert any("models.md" in d["source"] for d in listed), [d["source"] for d in listed]
    embedded = httpx.post(
        f"{mesh.gateway}/api/v1/embeddings/text", json={"texts": ["the euro rallied"]}, timeout=60
    )
    assert embedded.status_code == 200, embedded.text
    sentiment = httpx.post(
        f"{mesh.gateway}/api/v1/embeddings/sentiment",
        json={"texts": ["losses and a weak outlook"]},
        timeout=60,
    )
    assert sentiment.status_code == 200, sentiment.text


def test_cli_add_a_markdown_file_and_find_it(mesh: RunningMesh, tmp_path: Path) -> None:
    note = tmp_path / "eurusd-floor.md"
    note.write_text(NOTE)
    added = mesh.cli("rag", "add", str(note), "--symbol", "EURUSD")
    assert added.returncode == 0, added.stderr
    assert "added" in added.stdout
    query = mesh.cli("rag", "query", "where does the euro find support?", "--symbol", "EURUSD")
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines()[0].startswith("1. EURUSD desk note"), query.stdout
    found = get(mesh, "/api/v1/rag/query", query="euro support 1.0650", topK=3)
    assert found["passages"][0]["title"].startswith("EURUSD desk note"), found


def test_the_analyst_cites_knowledge_base_passages(mesh: RunningMesh, tmp_path: Path) -> None:
    note = tmp_path / "floor.md"
    note.write_text(NOTE)
    assert mesh.cli("rag", "add", str(note), "--symbol", "EURUSD").returncode == 0
    answer = mesh.cli("analyze", "EURUSD", "Where is support for the euro?", "--max-tokens", "16")
    assert answer.returncode == 0, answer.stderr
    assert "passage 1 EURUSD desk note" in answer.stdout + answer.stderr, answer.stdout
    body = {"symbol": "EURUSD", "question": "Where is support for the euro?", "maxTokens": 8}
    with (
        httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0)) as client,
        client.stream("POST", f"{mesh.gateway}/api/v1/analyze:stream", json=body) as response,
    ):
        assert response.status_code == 200
        context = next(
            json.loads(line[5:])["context"]
            for line in response.iter_lines()
            if line.startswith("data:") and '"context"' in line
        )
    passages = context["passages"]
    assert passages and passages[0]["title"].startswith("EURUSD desk note"), passages
    assert all(p["documentId"] for p in passages)
