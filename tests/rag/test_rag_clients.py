"""The RAG service's callers, against a real one: `kitrading rag add/query/list/status` (markdown files,
a PDF refused without pypdf), and the analyst's grounding (services.llm.sources), whose passages
carry document id and title into the analysis context that `kitrading analyze` prints."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kitrading.cli.commands.analyze import context_lines
from kitrading.cli.main import main
from kitrading.rag.v1 import request_response_pb2 as rr
from services.llm.convert import context_of
from services.llm.grounding import Gathered
from services.llm.grounding_settings import GroundingSettings
from services.llm.sources import MeshSources

from .conftest import RagStack

NOTE = """# EURUSD desk note

The euro weakened after the ECB signalled two more rate cuts this year.
Support sits at 1.0650; a daily close below it targets 1.0500.
"""


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def test_the_cli_adds_queries_and_lists(
    rag: RagStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    note = tmp_path / "eurusd-note.md"
    note.write_text(NOTE)
    plain = tmp_path / "risk.txt"
    plain.write_text("Never risk more than one percent of the account on a trade.")
    target = ["--target", rag.server.target]

    status, out, err = await cli(capsys, *target, "rag", "add", str(note), str(plain), "--symbol", "EURUSD")
    assert status == 0 and "2/2" in err  # the progress bar
    assert "EURUSD desk note" in out and out.count("added") == 2
    status, out, _ = await cli(capsys, *target, "rag", "add", str(note))
    assert status == 0 and "already there" in out

    status, out, _ = await cli(
        capsys, *target, "rag", "query", "where is support for the euro?", "--symbol", "EURUSD"
    )
    assert status == 0 and out.splitlines()[0].startswith("1. EURUSD desk note [")
    status, out, _ = await cli(capsys, *target, "rag", "query", "1.0650", "--hybrid", "--top-k", "1")
    assert status == 0 and "EURUSD desk note" in out

    status, out, _ = await cli(capsys, *target, "rag", "list")
    assert status == 0 and "EURUSD desk note" in out and "file:risk.txt" in out
    status, out, _ = await cli(capsys, *target, "rag", "status")
    assert status == 0 and "documents 2" in out and "exact (IndexFlatIP)" in out

    # a real PDF with text (matplotlib writes it with TrueType fonts; pypdf reads it back)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"pdf.fonttype": 42}):
        figure = plt.figure(figsize=(6, 2))
        figure.text(0.05, 0.5, "Quarterly review: gold found support at 2410 in March.")
        pdf = tmp_path / "gold-review.pdf"
        figure.savefig(pdf)
        plt.close(figure)
    status, out, _ = await cli(capsys, *target, "rag", "add", str(pdf))
    assert status == 0 and "added" in out, out
    status, out, _ = await cli(
        capsys, *target, "rag", "query", "where did gold find support?", "--top-k", "1"
    )
    assert status == 0 and "gold-review" in out, out


async def test_the_analysts_grounding_cites_passages_by_id_and_title(rag: RagStack) -> None:
    added = await rag.stub.AddDocument(
        rr.AddDocumentRequest(title="EURUSD desk note", text=NOTE, symbol="EURUSD")
    )
    await rag.stub.AddDocument(
        rr.AddDocumentRequest(title="GBP note", text="Sterling rallied.", symbol="GBPUSD")
    )
    sources = MeshSources(GroundingSettings(targets={"rag": rag.server.target}))
    await sources.start()
    try:
        passages = await sources.passages("EURUSD", "Should I buy or sell EURUSD?", top_k=5, deadline=10.0)
    finally:
        await sources.close()
    assert passages and passages[0].document_id == added.document.document_id
    assert passages[0].title == "EURUSD desk note" and "GBP note" not in {p.title for p in passages}

    context = context_of(Gathered(symbol="EURUSD", timeframe="H1", passages=passages))
    assert context.passages[0].document_id == added.document.document_id  # what the SSE context event carries
    lines = context_lines(context)
    assert any(f"EURUSD desk note [{added.document.document_id}]" in line for line in lines)


async def test_every_rag_command_prints_one_json_document(
    rag: RagStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    note = tmp_path / "eurusd-note.md"
    note.write_text(NOTE)
    target = ["--target", rag.server.target]
    status, out, err = await cli(capsys, *target, "rag", "add", str(note), "--symbol", "EURUSD", "--json")
    assert status == 0 and "1/1" in err  # the progress stays on stderr
    [added] = json.loads(out)["documents"]
    document_id = added["document"]["documentId"]
    assert added["created"] is True and added["document"]["title"] == "EURUSD desk note"

    status, out, _ = await cli(capsys, *target, "rag", "query", "support for the euro", "--json")
    passages = json.loads(out)["passages"]
    assert status == 0 and passages[0]["documentId"] == document_id and passages[0]["text"]
    status, out, _ = await cli(capsys, *target, "rag", "list", "--json")
    assert status == 0 and [d["documentId"] for d in json.loads(out)["documents"]] == [document_id]
    status, out, _ = await cli(capsys, *target, "rag", "status", "--json")
    assert status == 0 and json.loads(out)["documents"] == 1
    status, out, _ = await cli(capsys, *target, "rag", "delete", document_id, "--json")
    deleted = json.loads(out)
    assert status == 0 and deleted["documentId"] == document_id and deleted["chunksDeleted"] >= 1
