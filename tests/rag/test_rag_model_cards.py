"""The live model cards over real gRPC: a RAG service reads the pattern service's catalogue (a real
pattern service on port 0, no TCN trained) and a real regime service's HMM card (trained on the
bundled EURUSD candles from a real Data service); a new regime version replaces its document, an
unchanged card is not rewritten, and a service that is down is skipped."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from kitrading.common.v1 import job_pb2, market_pb2
from kitrading.forecast.v1 import resources_pb2 as fc_pb
from kitrading.pattern.v1 import resources_pb2 as pt_pb
from kitrading.rag.v1 import request_response_pb2 as rr
from kitrading.rag.v1 import resources_pb2 as pb
from kitrading.regime.v1 import request_response_pb2 as regime_rr
from kitrading.regime.v1 import service_pb2_grpc as regime_grpc
from services.data.samples import SAMPLES, load_candles
from services.pattern.app import PatternApp
from services.pattern.settings import PatternSettings
from services.rag.cards import forecast_card, pattern_card
from services.rag.service import MODEL_SOURCE, MODEL_TAG
from services.regime.app import RegimeApp
from services.regime.settings import RegimeSettings
from tests.conftest import PostgresForTests
from tests.grpc_helpers import data_service, fails, start_server

from .conftest import RagFactory, RagStack

H1 = market_pb2.TIMEFRAME_H1
CATALOGUE = MODEL_SOURCE + "pattern/catalogue"
REGIME = MODEL_SOURCE + "regime/EURUSD/H1"
#: The pattern service without training, scheduler or event monitor: its catalogue needs no model.
PATTERN: dict[str, Any] = {
    "train_on_start": False,
    "schedule": False,
    "event_retrain": False,
    "use_gpu": False,
}


def dead_target() -> str:
    """`host:port` where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def model_docs(rag: RagStack) -> dict[str, pb.Document]:
    page = await rag.stub.ListDocuments(rr.ListDocumentsRequest(tag=MODEL_TAG, page_size=100))
    return {d.source: d for d in page.documents}


async def text_of(rag: RagStack, document_id: str) -> str:
    return (await rag.stub.GetDocument(rr.GetDocumentRequest(document_id=document_id))).document.text


@pytest.fixture
async def pattern_target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    settings = PatternSettings(home=tmp_path_factory.mktemp("pattern"), **PATTERN)
    server = await start_server(PatternApp(settings, data=dead_target()), "pattern")
    yield server.target
    await server.stop(0)


async def test_catalogue_ingested_unchanged_not_rewritten_down_services_skipped(
    rag_factory: RagFactory, pattern_target: str
) -> None:
    down = dead_target()
    rag = await rag_factory(
        models={"pattern": pattern_target, "forecast": down, "regime": down}, model_cards_s=3600.0
    )
    domain = rag.app.domain
    await domain.refresh_model_cards()  # after the one at start (they take turns)
    docs = await model_docs(rag)
    assert list(docs) == [CATALOGUE]  # forecast and regime are down: skipped; no TCN published yet
    # cards of earlier runs: the TCN's goes (pattern answered without one), the forecast's stays (down)
    for source in (MODEL_SOURCE + "pattern/tcn", MODEL_SOURCE + "forecast/EURUSD/H1"):
        text = f"An old card of {source}."
        old = rr.AddDocumentRequest(title="old card", text=text, source=source, tags=[MODEL_TAG])
        await rag.stub.AddDocument(old, timeout=30)
    assert await domain.refresh_model_cards() == 0
    docs = await model_docs(rag)
    assert sorted(docs) == [MODEL_SOURCE + "forecast/EURUSD/H1", CATALOGUE]
    catalogue = docs[CATALOGUE]
    assert catalogue.title.startswith("Pattern catalogue") and "mesh-knowledge" in catalogue.tags
    text = await text_of(rag, catalogue.document_id)
    assert "`double_top`" in text and "Direction: bearish" in text

    assert await domain.refresh_model_cards() == 0  # unchanged: nothing rewritten
    again = await model_docs(rag)
    assert again[CATALOGUE].document_id == catalogue.document_id
    assert again[CATALOGUE].create_time == catalogue.create_time

    reply = await rag.stub.QueryKnowledgeBase(
        rr.QueryKnowledgeBaseRequest(query="What does a head and shoulders chart pattern signal?", top_k=3)
    )
    assert reply.passages and reply.passages[0].document_id == catalogue.document_id


async def test_a_new_regime_version_replaces_its_card(
    rag_factory: RagFactory, postgres: PostgresForTests, tmp_path_factory: pytest.TempPathFactory
) -> None:
    candles = load_candles([s for s in SAMPLES if s.symbol == "EURUSD"])["EURUSD"][-1500:]
    rows = [("EURUSD", market_pb2.ASSET_CLASS_FX, True, H1, candles)]
    async with data_service(postgres, "test_rag_cards", rows) as data:
        settings = RegimeSettings(
            home=tmp_path_factory.mktemp("regime"),
            restarts=1,
            max_iter=20,
            boosting_rounds=10,
            worker_nice=0,
            event_retrain=False,
        )
        server = await start_server(RegimeApp(settings, data=data.target, schedule=False), "regime")
        try:
            async with grpc.aio.insecure_channel(server.target) as channel:
                regime = regime_grpc.RegimeServiceStub(channel)
                rag = await rag_factory(models={"regime": server.target}, model_cards_s=3600.0)
                await wait_ready(regime)
                await rag.app.domain.refresh_model_cards()
                first = (await model_docs(rag))[REGIME]
                assert first.title == "Regime model card: EURUSD H1 (v000001)" and first.symbol == "EURUSD"
                text = await text_of(rag, first.document_id)
                assert "hidden Markov model" in text and "| state | regime |" in text
                assert await rag.app.domain.refresh_model_cards() == 0

                job = await regime.TrainRegimeModels(regime_rr.TrainRegimeModelsRequest(symbols=["EURUSD"]))
                await wait_job(regime, job.job.job_id)
                assert await rag.app.domain.refresh_model_cards() == 1
                docs = await model_docs(rag)
                assert list(docs) == [REGIME] and docs[REGIME].title.endswith("(v000002)")
                await fails(
                    rag.stub.GetDocument(rr.GetDocumentRequest(document_id=first.document_id)),
                    grpc.StatusCode.NOT_FOUND,
                )
                status = await rag.stub.GetRagStatus(rr.GetRagStatusRequest())
                assert status.documents == 1  # the old version's chunks went with it
        finally:
            await server.stop(0)


async def wait_ready(regime: regime_grpc.RegimeServiceStub, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while not (await regime.GetRegimeStatus(regime_rr.GetRegimeStatusRequest())).ready:
        assert time.monotonic() < deadline, "the regime service trained nothing"
        await asyncio.sleep(0.2)


async def wait_job(regime: regime_grpc.RegimeServiceStub, job_id: str, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while True:
        job = (await regime.GetTrainingJob(regime_rr.GetTrainingJobRequest(job_id=job_id))).job
        if job.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED):
            assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
            return
        assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
        await asyncio.sleep(0.2)


def test_forecast_card_is_a_readable_table() -> None:
    performance = fc_pb.ModelPerformance(
        symbol="EURUSD",
        timeframe=H1,
        model_version="v000003",
        horizon=24,
        samples=144,
        metrics=[
            fc_pb.MethodMetrics(
                method=fc_pb.FORECAST_METHOD_NHITS,
                mae=0.0012,
                mase=0.93,
                directional_accuracy=0.55,
                interval_coverage=[fc_pb.IntervalCoverage(level=80, coverage=0.78)],
            ),
            fc_pb.MethodMetrics(
                method=fc_pb.FORECAST_METHOD_NAIVE, mae=0.0015, mase=1.0, dm_p_value_vs_nhits=0.01
            ),
        ],
    )
    card = forecast_card(performance)
    assert card.title == "Forecast model card: EURUSD H1 (v000003)" and card.symbol == "EURUSD"
    assert card.source == MODEL_SOURCE + "forecast/EURUSD/H1"
    assert "| NHITS | 0.0012 |" in card.text and "80%: 0.78" in card.text
    assert "| NAIVE | 0.0015 |" in card.text and "0.01 |" in card.text
    assert "significantly better (DM p < 0.05) than: NAIVE" in card.text


def test_pattern_card_names_the_version_and_each_class() -> None:
    model = pt_pb.PatternModel(
        version="v000002",
        window_bars=32,
        classes=[pt_pb.PatternClassMetrics(pattern_type="double_top", support=12, f1=0.41, pr_auc=0.37)],
        macro=pt_pb.PatternClassMetrics(pattern_type="macro", f1=0.41),
        series=[pt_pb.PatternModelSeries(symbol="EURUSD", timeframe=H1, bars=1500)],
    )
    card = pattern_card(model)
    assert card.title == "Pattern model card: TCN v000002" and card.source == MODEL_SOURCE + "pattern/tcn"
    assert "| double_top | 12 |" in card.text and "F1 0.41" in card.text
    assert "EURUSD H1 (1500 bars" in card.text
