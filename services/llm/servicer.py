"""LlmService servicer: protos in, protos out; gathering is the Grounder's, answering the Analyst's.

Validation, error mapping, limits, metrics and logs are the runtime's (services/runtime). The order of
one analysis: check the question and symbol, refuse at once when the answer queue is full (so the
caller gets RESOURCE_EXHAUSTED / HTTP 429 before any message), gather the grounding, then stream the
answer. Every engine stream is wrapped in `aclosing`: a caller that cancels or hangs up stops
generation at once and frees its slot in the queue.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from kitrading.llm.v1 import request_response_pb2 as rr
from kitrading.llm.v1 import service_pb2_grpc
from services.llm import convert as cv
from services.llm.analyst import Analyst
from services.llm.engine import Token
from services.llm.grounding import Gathered, Grounder, grounding_of
from services.llm.limiter import GenerationLimiter
from services.llm.prompt import validate_question, validate_symbol

Context = Any  # grpc.aio.ServicerContext; unused here: the runtime owns status handling
AnalyzeRequest = rr.AnalyzeRequest | rr.AnalyzeStreamRequest


def refuse_when_full(limiter: GenerationLimiter) -> None:
    """ResourceExhausted now when a new answer could neither run nor wait (the limiter's own rule)."""
    can_run = limiter.active < limiter.max_concurrent and limiter.queue_depth == 0
    if not can_run and limiter.queue_depth >= limiter.max_queued:
        raise limiter.refusal()


class LlmServicer(service_pb2_grpc.LlmServiceServicer):
    def __init__(self, analyst: Analyst, grounder: Grounder) -> None:
        self.analyst = analyst
        self.grounder = grounder

    async def _begin(self, request: AnalyzeRequest) -> tuple[Gathered, AsyncGenerator[Token, None]]:
        """Checks, the grounding, and the (not yet started) answer stream."""
        question = validate_question(request.question)
        validate_symbol(request.symbol)
        refuse_when_full(self.analyst.limiter)
        gathered = await self.grounder.gather(
            request.symbol,
            question,
            cv.timeframe_label(request.timeframe),
            cv.direction_label(request.direction),
        )
        tokens = self.analyst.analyze(
            request.question,
            grounding_of(gathered),
            max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
            temperature=request.temperature if request.HasField("temperature") else None,
        )
        return gathered, tokens

    async def Analyze(self, request: rr.AnalyzeRequest, context: Context) -> rr.AnalyzeResponse:
        recorder = cv.AnswerRecorder()
        gathered, tokens = await self._begin(request)
        async with aclosing(tokens) as stream:
            async for token in stream:
                recorder.token(token)
        return rr.AnalyzeResponse(
            answer=recorder.answer,
            context=cv.context_of(gathered),
            completion=recorder.completion(self.analyst.engine.info()),
        )

    async def AnalyzeStream(
        self, request: rr.AnalyzeStreamRequest, context: Context
    ) -> AsyncIterator[rr.AnalyzeStreamResponse]:
        recorder = cv.AnswerRecorder()
        gathered, tokens = await self._begin(request)
        async with aclosing(tokens) as stream:
            yield rr.AnalyzeStreamResponse(context=cv.context_of(gathered))
            async for token in stream:
                piece = recorder.token(token)
                if piece is not None:
                    yield rr.AnalyzeStreamResponse(token=piece)
        yield rr.AnalyzeStreamResponse(completion=recorder.completion(self.analyst.engine.info()))

    async def GetLlmStatus(
        self, request: rr.GetLlmStatusRequest, context: Context
    ) -> rr.GetLlmStatusResponse:
        ollama = self.analyst.settings.ollama
        return cv.status_out(await self.analyst.status(), base_url=ollama.base_url if ollama else "")
