"""The pattern TCN's `Trainer` on the shared machinery: one model (key `tcn`) over many series.

`prepare` (serving process) reads the candles of the job's symbols (the request's, or every active
symbol, each at its own timeframe unless the job names one); `run` (worker process,
services.pattern.training) labels, trains, evaluates and publishes. A job that is not forced (and an
event-triggered one) is skipped when no series has a bar newer than the current version's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from services.pattern.settings import PatternSettings
from services.pattern.training import MODEL, PatternTask, SeriesData
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.training.jobs import TrainingJob
from services.training.registry import MODEL_KEY, SYMBOL_KEY, ModelRegistry, ModelVersion
from services.training.sources import CandleSource, DataEvent, EventStream
from services.training.trainer import Skip, WorkerSpec


def no_model_message(key: str) -> str:
    return "no pattern TCN yet: train it with POST /api/v1/patterns/train"


def pattern_registry(root: Any) -> ModelRegistry:
    return ModelRegistry(root, key=MODEL_KEY, no_model=no_model_message)


class PatternTrainer:
    model = MODEL
    per_symbol = False
    worker = WorkerSpec(setup="services.pattern.training:setup", run="services.pattern.training:run")

    def __init__(self, settings: PatternSettings, source: CandleSource, registry: ModelRegistry) -> None:
        self.settings = settings
        self.source = source
        self.registry = registry

    def planned_steps(self) -> int:
        return self.settings.max_steps

    async def check_keys(self, keys: Sequence[str]) -> list[str]:
        names = list(dict.fromkeys(keys))
        if names != [MODEL]:
            raise InvalidArgument("model", f"the pattern service trains one model, {MODEL!r}")
        return names

    async def all_keys(self) -> list[str]:
        return [MODEL]

    async def stale_keys(self) -> list[str]:
        age = self.model_age_days()
        return [MODEL] if age is None or age >= self.settings.auto_retrain_days else []

    def current(self) -> ModelVersion | None:
        try:
            return self.registry.get(MODEL)
        except (FailedPrecondition, NotFound):
            return None

    def model_age_days(self) -> float | None:
        version = self.current()
        if version is None:
            return None
        return (datetime.now(UTC) - version.created_at).total_seconds() / 86400

    async def symbols(self, requested: Sequence[str]) -> list[str]:
        """The request's symbols, validated (INVALID_ARGUMENT `symbols[i]`, NOT_FOUND), else every
        active one."""
        if not requested:
            return [s.symbol for s in await self.source.list_symbols() if s.active]
        out = []
        for i, name in enumerate(requested):
            try:
                SYMBOL_KEY.check(name)
            except InvalidArgument:
                raise InvalidArgument(f"symbols[{i}]", SYMBOL_KEY.hint) from None
            if await self.source.get_symbol(name) is None:
                raise NotFound(
                    f"symbol {name} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": name}
                )
            out.append(name)
        return list(dict.fromkeys(out))

    async def prepare(self, key: str, job: TrainingJob) -> PatternTask | Skip:
        s = self.settings
        symbols = await self.symbols(list(job.options.get("symbols", ())))
        series, short = [], []
        need = s.window * 4
        for symbol in symbols:
            info = await self.source.get_symbol(symbol)
            if info is None:
                continue
            timeframe = job.timeframe or info.timeframe or s.timeframe
            candles = await self.source.fetch(symbol, timeframe, limit=s.train_bars or None)
            if len(candles) < need:
                short.append(f"{symbol} {timeframe} ({len(candles)} bars)")
                continue
            series.append(SeriesData(symbol, timeframe, candles.reset_index(drop=True)))
        if not series:
            raise FailedPrecondition(
                f"no series with at least {need} candles to train the pattern TCN on"
                + (f": {', '.join(short)}" if short else ""),
                reason="NOT_ENOUGH_CANDLES",
            )
        if not job.force or job.trigger == "event":
            current = self.current()
            if current is not None and not _has_new_bars(current, series):
                return Skip(f"no candle newer than the ones {current.version} was trained on")
        return PatternTask(
            job_id=job.job_id,
            series=tuple(series),
            config=s.tcn_config(),
            follow_horizon=s.follow_horizon,
            keep_versions=s.keep_versions,
            trigger=job.trigger,
            extra={"skipped_series": short},
        )


def _has_new_bars(version: ModelVersion, series: Sequence[SeriesData]) -> bool:
    trained = {(d["symbol"], d["timeframe"]): d["last_time"] for d in version.metadata.get("series", [])}
    for s in series:
        last = trained.get((s.symbol, s.timeframe))
        if last is None:
            return True
        newest = pd.Timestamp(s.candles["time"].iloc[-1])
        newest = newest.tz_localize("UTC") if newest.tzinfo is None else newest
        if newest > pd.Timestamp(last):
            return True
    return False


def model_events(stream: EventStream) -> EventStream:
    """The Data service's event stream with every symbol's event retargeted at the one model key,
    so the shared EventMonitor (which retrains the keys its events name) retrains the TCN."""

    async def watch(after_event_id: int) -> AsyncIterator[DataEvent]:
        async for event in stream(after_event_id):
            yield replace(event, symbol=MODEL) if event.symbol else event

    return watch
