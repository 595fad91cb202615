"""The pattern domain in one object: the one door its servicer uses.

domain = PatternDomain(PatternSettings.from_env(), source)
await domain.start()                                  # no TCN yet: the first training in the background
result = await domain.detect_symbol("EURUSD", lookback=200)                 # the rules engine
result = await domain.detect_symbol("EURUSD", engine="tcn")                 # the TCN (rules until one exists)
result = await domain.detect_candles(frame, engine="both")                  # caller-given candles, validated
job = await domain.train(background=False)                                  # a job on the shared runner
await domain.stop()

The TCN is the shared registry's model `tcn` (services.training.registry): the serving side loads the
current version and reloads it when its pointer changes, so a retrain is picked up without a restart
and a killed training leaves the previous version serving. Rules follow-through figures are computed
once per series state (its bar count and last bar) and reused; a TCN pattern carries its type's
follow-through on the model's held-out test periods (stored with the version).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from services.pattern.catalogue import BY_SLUG, CATALOGUE, PatternSpec
from services.pattern.detector import Detection, detect
from services.pattern.followthrough import FollowThrough, follow_through
from services.pattern.pivots import zigzag
from services.pattern.settings import PatternSettings
from services.pattern.trainer import PatternTrainer, model_events, pattern_registry
from services.pattern.training import CONFIG_FILE, MODEL, WEIGHTS_FILE
from services.runtime.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.training.jobs import JobRunner, RunnerSettings, TrainingJob
from services.training.registry import ModelVersion, PointerStamp
from services.training.retraining import EventMonitor, RetrainScheduler, lead_retraining
from services.training.sources import CandleSource, EventStream
from services.training.worker import WorkerOptions

log = logging.getLogger(__name__)

DEFAULT_LOOKBACK = 200
DEFAULT_MIN_CONFIDENCE = 0.5
RULES_VERSION = "rules-v1"
ENGINES = ("rules", "tcn", "both")
#: Kept for callers of the first version; the notes now say which engine answered and why.
ENGINE_NOTE = "the rule-based detector answered"


@dataclass(frozen=True, slots=True)
class Found:
    detection: Detection
    start_time: datetime
    end_time: datetime
    point_times: tuple[datetime, ...]
    follow: FollowThrough | None
    #: Open times of the first and last bar of the follow-through's held-out period (None when the
    #: figures are pooled over the TCN's test periods).
    follow_period: tuple[datetime, datetime] | None = None
    engine: str = "rules"


@dataclass(frozen=True, slots=True)
class Result:
    symbol: str
    timeframe: str
    patterns: list[Found]  # most confident first
    bars: int
    window_start: datetime | None
    window_end: datetime | None
    engine: str = "rules"
    note: str = ENGINE_NOTE
    model_version: str = RULES_VERSION


@dataclass(frozen=True, slots=True)
class ScanError:
    symbol: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Status:
    ready: bool
    message: str
    version: ModelVersion | None
    job: TrainingJob | None


@dataclass(frozen=True, slots=True)
class _Loaded:
    stamp: PointerStamp
    version: ModelVersion
    config: Any  # TCNConfig
    model: Any  # torch module
    thresholds: list[float]
    follow: dict[str, FollowThrough]


class PatternDomain:
    """Owns the rules engine, the registry, the job runner, the retraining automation and the TCN."""

    def __init__(
        self, settings: PatternSettings, source: CandleSource, *, event_stream: EventStream | None = None
    ) -> None:
        self.settings = settings
        self.source = source
        self._follow: dict[tuple[str, str], tuple[tuple[int, object], dict[str, FollowThrough]]] = {}
        self.registry = pattern_registry(settings.models_dir)
        self.trainer = PatternTrainer(settings, source, self.registry)
        options = WorkerOptions(
            spec=self.trainer.worker,
            models_dir=settings.models_dir,
            nice=settings.worker_nice,
            threads=settings.worker_threads,
            use_gpu=settings.use_gpu,
            gpu_device=settings.gpu_device,
            gpu_memory_fraction=settings.gpu_memory_fraction,
        )
        self.jobs = JobRunner(
            self.trainer,
            RunnerSettings(
                worker=options, worker_idle_s=settings.worker_idle_s, max_jobs_kept=settings.max_jobs_kept
            ),
        )
        self.scheduler = RetrainScheduler(self.jobs, interval_s=settings.retrain_check_interval_s)
        self.events: EventMonitor | None = None
        if event_stream is not None:
            self.events = EventMonitor(
                model_events(event_stream),
                self.jobs,
                settings.state_dir / "event_monitor.json",
                debounce_s=settings.event_debounce_s,
                max_delay_s=settings.event_max_delay_s,
                types=("CANDLES_INGESTED",),
            )
        self.first_job: TrainingJob | None = None
        self.bootstrapping = False
        self._bootstrap: asyncio.Task[None] | None = None
        self._schedule = True
        self._train_on_start: bool | None = None
        self._loaded: _Loaded | None = None
        self._load_lock = asyncio.Lock()

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(
        self, *, schedule: bool = True, train_on_start: bool | None = None, lead: bool = True
    ) -> None:
        """Start the job runner, the scheduler and the event monitor (as the settings say); with
        `train_on_start` (default: the settings') and no published TCN, queue the first training in
        the background once the Data service lists the symbols."""
        await self.jobs.start(clean=False)
        try:
            await self._tcn()
        except DomainError as exc:
            log.warning("pattern TCN not loaded at start: %s", exc)
        self._schedule, self._train_on_start = schedule, train_on_start
        if lead:
            await self.lead()

    async def lead(self) -> None:
        """The work one instance of the service does (services.runtime.leases): staging leftovers of
        killed workers removed (another instance's could be in progress), the scheduler, the event
        monitor and the first training."""
        await lead_retraining(
            self.jobs,
            self.scheduler,
            self.events,
            schedule=self._schedule and self.settings.schedule and self.settings.auto_retrain_days > 0,
            event_retrain=self.settings.event_retrain,
        )
        wanted = self.settings.train_on_start if self._train_on_start is None else self._train_on_start
        if wanted and self.trainer.current() is None:
            self.bootstrapping = True
            self._bootstrap = asyncio.create_task(
                self._first_training(), name="pattern-first-training", context=contextvars.Context()
            )

    async def _first_training(self, retry_s: float = 2.0) -> None:
        try:
            while True:
                try:
                    if await self.trainer.symbols([]):
                        self.first_job = await self.jobs.train([MODEL], trigger="first start")
                        return
                    log.info("first TCN training waits for an active symbol")
                except DomainError as exc:
                    log.info("first TCN training waits for the data service: %s", exc)
                await asyncio.sleep(retry_s)
        finally:
            self.bootstrapping = False

    async def stop(self) -> None:
        if self._bootstrap is not None:
            self._bootstrap.cancel()
            await asyncio.gather(self._bootstrap, return_exceptions=True)
        if self.events is not None:
            await self.events.stop()
        await self.scheduler.stop()
        await self.jobs.stop()

    # ---- training and the model -----------------------------------------------------------------

    async def train(
        self,
        symbols: Sequence[str] = (),
        *,
        force: bool = True,
        background: bool = True,
        timeframe: str | None = None,
        max_steps: int = 0,
    ) -> TrainingJob:
        """One TCN over `symbols` (empty: every active symbol), each at `timeframe` or its own."""
        if max_steps and max_steps != self.settings.max_steps:
            raise InvalidArgument(
                "max_steps",
                f"the service trains with KITRADING_PATTERN_MAX_STEPS={self.settings.max_steps}; "
                f"send 0 or {self.settings.max_steps}",
            )
        names = await self.trainer.symbols(list(symbols)) if symbols else []
        if not names and not await self.trainer.symbols([]):
            raise FailedPrecondition("no active symbol to train the pattern TCN on", reason="NO_SYMBOLS")
        return await self.jobs.train(
            [MODEL],
            force=force,
            background=background,
            timeframe=timeframe,
            options={"symbols": names} if names else None,
        )

    async def model(self, version: str = "") -> ModelVersion | None:
        """A published version (default: the current one; None when there is none)."""
        if version:
            return await asyncio.to_thread(self.registry.get, MODEL, version)
        return await asyncio.to_thread(self.trainer.current)

    async def versions(self) -> list[ModelVersion]:
        """The TCN's published versions, newest first (empty before the first is published)."""
        return await asyncio.to_thread(self.registry.newest_first, MODEL)

    async def rollback(self, version: str = "") -> ModelVersion:
        """Serve a stored TCN version (default: the one published before the current one).
        Detection switches at its next call (`_tcn` follows the registry's pointer)."""
        return await asyncio.to_thread(self.registry.rollback, MODEL, version or None)

    def _first_running(self) -> TrainingJob | None:
        if self.first_job is None:
            return None
        job = self.jobs.get(self.first_job.job_id)
        return None if job.state.terminal else job

    async def status(self) -> Status:
        version = await asyncio.to_thread(self.trainer.current)
        first = self._first_running()
        job = first or self.jobs.latest()
        if first is not None:
            message = (
                f"training the first pattern TCN in the background (job {first.job_id}, "
                f"{first.state}); detection answers with the rule-based detector until it is published"
            )
        elif self.bootstrapping and version is None:
            message = "waiting for the data service to queue the first pattern TCN training"
        elif version is not None:
            message = f"serving TCN {version.version}" + (f"; job {job.job_id} is {job.state}" if job else "")
        else:
            message = (
                "no pattern TCN yet: detection answers with the rule-based detector; train one with "
                "POST /api/v1/patterns/train"
            )
        return Status(version is not None, message, version, job)

    async def _tcn(self) -> _Loaded | None:
        """The current TCN (reloaded when the registry's pointer changes), or None."""
        stamp = await asyncio.to_thread(self.registry.pointer_stamp, MODEL)
        loaded = self._loaded
        if stamp is None:
            return None
        if loaded is not None and loaded.stamp == stamp:
            return loaded
        async with self._load_lock:
            if self._loaded is not None and self._loaded.stamp == stamp:
                return self._loaded
            self._loaded = await asyncio.to_thread(self._load, stamp)
            log.info("pattern TCN %s loaded", self._loaded.version.version)
            return self._loaded

    def _load(self, stamp: PointerStamp) -> _Loaded:
        import torch

        from services.pattern.tcn import TCNConfig, load_model

        torch.set_num_threads(max(1, self.settings.worker_threads))
        version = self.registry.get(MODEL)
        config = TCNConfig.from_dict(json.loads((version.path / CONFIG_FILE).read_text()))
        model = load_model(config, str(version.path / WEIGHTS_FILE))
        evaluation = version.metadata.get("evaluation", {})
        thresholds = [0.5 if t is None else float(t) for t in evaluation.get("thresholds", [])]
        if len(thresholds) != len(config.slugs):
            thresholds = [0.5] * len(config.slugs)
        follow = {
            row["pattern_type"]: _stored_follow(row["pattern_type"], row.get("tcn_follow_through", {}))
            for row in evaluation.get("classes", [])
        }
        return _Loaded(stamp, version, config, model, thresholds, follow)

    # ---- detection ------------------------------------------------------------------------------

    async def _timeframe(self, symbol: str, timeframe: str) -> str:
        info = await self.source.get_symbol(symbol)
        if info is None:
            raise NotFound(
                f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
            )
        return timeframe or info.timeframe or self.settings.timeframe

    async def _engines(self, engine: str, bars: int) -> tuple[bool, _Loaded | None, str]:
        """(rules?, the TCN or None, the note) for the asked engine over `bars` candles."""
        if engine not in ENGINES:
            raise InvalidArgument("engine", f"must be one of {', '.join(ENGINES)}")
        if engine == "rules":
            return True, None, "the rule-based detector answered (ask engine=tcn for the network)"
        loaded = await self._tcn()
        if loaded is None:
            first = self._first_running()
            why = (
                f"the first TCN is training (job {first.job_id})"
                if first is not None
                else "no TCN is published yet"
            )
            return True, None, f"{why}: the rule-based detector answered"
        if bars < loaded.config.window:
            return (
                True,
                None,
                (
                    f"the TCN reads {loaded.config.window}-bar windows and {bars} candles were given: "
                    "the rule-based detector answered"
                ),
            )
        if engine == "both":
            return True, loaded, f"both engines: each pattern names its own (TCN {loaded.version.version})"
        return False, loaded, ""

    async def detect_symbol(
        self,
        symbol: str,
        *,
        timeframe: str = "",
        lookback: int = 0,
        min_confidence: float = 0.0,
        engine: str = "rules",
    ) -> Result:
        """Patterns confirmed in the symbol's newest `lookback` bars, with their follow-through."""
        frame_name = await self._timeframe(symbol, timeframe)
        candles = await self.source.fetch(symbol, frame_name, limit=self.settings.history_bars)
        lookback = lookback or DEFAULT_LOOKBACK
        if len(candles) < 3:
            raise FailedPrecondition(
                f"{symbol} has {len(candles)} {frame_name} candles; detection needs at least 3",
                reason="NOT_ENOUGH_CANDLES",
            )
        first = max(0, len(candles) - lookback)
        rules, loaded, note = await self._engines(engine, len(candles))
        found: list[tuple[Detection, str]] = []
        follow: dict[str, dict[str, FollowThrough]] = {}
        if rules:
            detections = await asyncio.to_thread(detect, candles)
            follow["rules"] = await self._follow_through(symbol, frame_name, candles, detections)
            found += [(d, "rules") for d in detections if d.end >= first]
        if loaded is not None:
            found += [(d, "tcn") for d in await asyncio.to_thread(tcn_detect, loaded, candles, first)]
            follow["tcn"] = loaded.follow
        return _result(symbol, frame_name, candles, found, first, min_confidence, follow, loaded, note)

    async def _follow_through(
        self, symbol: str, timeframe: str, candles: pd.DataFrame, detections: list[Detection]
    ) -> dict[str, FollowThrough]:
        key = (symbol, timeframe)
        state = (len(candles), candles["time"].iloc[-1])
        cached = self._follow.get(key)
        if cached is not None and cached[0] == state:
            return cached[1]
        rows = await asyncio.to_thread(
            follow_through,
            candles,
            detections,
            horizon=self.settings.follow_horizon,
            holdout=self.settings.holdout,
        )
        table = {r.slug: r for r in rows}
        self._follow[key] = (state, table)
        return table

    async def detect_candles(
        self,
        candles: pd.DataFrame,
        *,
        symbol: str = "",
        timeframe: str = "H1",
        min_confidence: float = 0.0,
        engine: str = "rules",
    ) -> Result:
        """Patterns in caller-given candles (columns time, open, high, low, close, volume), validated
        first: INVALID_ARGUMENT names `candles[i].<field>`."""
        check_candles(candles)
        rules, loaded, note = await self._engines(engine, len(candles))
        found: list[tuple[Detection, str]] = []
        if rules:
            found += [(d, "rules") for d in await asyncio.to_thread(detect, candles)]
        follow: dict[str, dict[str, FollowThrough]] = {}
        if loaded is not None:
            found += [(d, "tcn") for d in await asyncio.to_thread(tcn_detect, loaded, candles, 0)]
            follow["tcn"] = loaded.follow
        return _result(symbol, timeframe, candles, found, 0, min_confidence, follow, loaded, note)

    async def scan(
        self, *, timeframe: str = "", lookback: int = 0, min_confidence: float = 0.0, engine: str = "rules"
    ) -> tuple[list[Result], list[ScanError]]:
        """Every active symbol in one pass; a symbol that fails is named with its error."""
        results, errors = [], []
        for info in await self.source.list_symbols():
            if not info.active:
                continue
            try:
                results.append(
                    await self.detect_symbol(
                        info.symbol,
                        timeframe=timeframe,
                        lookback=lookback,
                        min_confidence=min_confidence,
                        engine=engine,
                    )
                )
            except DomainError as exc:
                errors.append(ScanError(info.symbol, exc.code, str(exc)))
        return results, errors

    def pattern_types(self) -> tuple[PatternSpec, ...]:
        return CATALOGUE


def tcn_detect(loaded: _Loaded, candles: pd.DataFrame, first: int) -> list[Detection]:
    """The TCN's patterns confirmed at bars >= `first`: where a type's probability crosses its
    threshold (the first bar of each run at or above it), the probability as confidence, the
    zig-zag pivots it read as key points (services.pattern.tcn.key_points)."""
    from services.pattern.tcn import bar_features, events, key_points, predict, windows

    config = loaded.config
    n = len(candles)
    ends = np.arange(max(config.window - 1, first - 1), n, dtype=np.int64)
    if not len(ends):
        return []
    probs = predict(loaded.model, windows(bar_features(candles), ends, config.window))
    found = [e for e in events(probs, ends, loaded.thresholds, config.slugs) if e[1] >= first]
    if not found:
        return []
    high = candles["high"].to_numpy(dtype=np.float64)
    low = candles["low"].to_numpy(dtype=np.float64)
    close = candles["close"].to_numpy(dtype=np.float64)
    pivots = zigzag(high, low, close)
    out = []
    for slug, end, p in found:
        start, points = key_points(candles, slug, end, pivots)
        out.append(Detection(slug, BY_SLUG[slug].direction, round(p, 4), start, end, points))
    return out


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _stored_follow(slug: str, row: dict[str, Any]) -> FollowThrough:
    return FollowThrough(
        slug=slug,
        horizon=int(row.get("horizon_bars", 0)),
        count=int(row.get("samples", 0)),
        hit_rate=_num(row.get("hit_rate")),
        hit_low=_num(row.get("hit_rate_low")),
        hit_high=_num(row.get("hit_rate_high")),
        mean_return=_num(row.get("mean_return")),
        mean_low=_num(row.get("mean_return_low")),
        mean_high=_num(row.get("mean_return_high")),
        base_rate=_num(row.get("base_rate")),
        base_mean_return=_num(row.get("base_mean_return")),
        period_start=0,
        period_end=0,
    )


def check_candles(candles: pd.DataFrame) -> None:
    """INVALID_ARGUMENT naming the first bad candle: non-finite prices, high < low, a price outside
    [low, high], times not strictly increasing."""
    prices = candles[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(prices)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InvalidArgument(
            f"candles[{i}].{('open', 'high', 'low', 'close')[j]}", "must be a finite number"
        )
    high, low = prices[:, 1], prices[:, 2]
    for name, values in (("high", high < low), ("open", (prices[:, 0] > high) | (prices[:, 0] < low)),
                         ("close", (prices[:, 3] > high) | (prices[:, 3] < low))):  # fmt: skip
        if values.any():
            i = int(np.flatnonzero(values)[0])
            raise InvalidArgument(f"candles[{i}].{name}", "must lie within [low, high] (and high >= low)")
    times = pd.DatetimeIndex(pd.to_datetime(candles["time"], utc=True))
    order = np.flatnonzero(np.diff(times.asi8) <= 0)
    if len(order):
        raise InvalidArgument(f"candles[{int(order[0]) + 1}].time", "times must be strictly increasing")


def _result(
    symbol: str,
    timeframe: str,
    candles: pd.DataFrame,
    detections: Sequence[tuple[Detection, str]],
    first: int,
    min_confidence: float,
    follow: dict[str, dict[str, FollowThrough]],
    loaded: _Loaded | None = None,
    note: str = ENGINE_NOTE,
) -> Result:
    """`min_confidence` (default 0.5) filters the rules' fit scores; the TCN's patterns are the
    crossings of its per-type thresholds and only a `min_confidence` the caller set filters them."""
    times = pd.DatetimeIndex(pd.to_datetime(candles["time"], utc=True))
    floor = min_confidence or DEFAULT_MIN_CONFIDENCE
    found = []
    for d, engine in detections:
        limit = floor if engine == "rules" else min_confidence
        if d.confidence < limit or math.isnan(d.confidence):
            continue
        row = follow.get(engine, {}).get(d.slug)
        found.append(
            Found(
                d,
                times[d.start].to_pydatetime(),
                times[d.end].to_pydatetime(),
                tuple(times[p.index].to_pydatetime() for p in d.points),
                row,
                _period(times, row) if engine == "rules" else None,
                engine,
            )
        )
    found.sort(key=lambda f: (-f.detection.confidence, -f.detection.end))
    if loaded is None:
        engine_name, version = "rules", RULES_VERSION
    else:
        engine_name = "tcn"
        version = f"tcn/{loaded.version.version}"
        if note.startswith("both"):
            version = f"{RULES_VERSION}+{version}"
    return Result(
        symbol,
        timeframe,
        found,
        len(candles) - first,
        times[first].to_pydatetime() if len(times) else None,
        times[-1].to_pydatetime() if len(times) else None,
        engine_name,
        note,
        version,
    )


def _period(times: pd.DatetimeIndex, follow: FollowThrough | None) -> tuple[datetime, datetime] | None:
    if follow is None or not len(times):
        return None
    last = len(times) - 1
    return times[min(follow.period_start, last)].to_pydatetime(), times[
        min(follow.period_end, last)
    ].to_pydatetime()
