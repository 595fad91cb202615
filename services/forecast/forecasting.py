"""Serving forecasts: load the current model per symbol, pick up new versions without a restart,
predict on the latest candles, map the steps onto the symbol's trading calendar, cache results.

Hot path of one forecast: one `stat` of the symbol's `current` pointer (reload only when it
changed), one candle fetch of the newest bars (`input_size`, or the intervals' volatility window
when longer), a cache lookup keyed by (symbol, model version, last candle time); on a miss, one
forward pass in a worker thread.
A batch call does the fetches concurrently and all forward passes in a single thread hop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from services.forecast.calendar import calendar_for, timeframe_delta
from services.forecast.evaluation import VolatilityScale
from services.forecast.model import NHITSConfig, NHITSForecaster, StackedNHITS
from services.forecast.registry import check_symbol, no_model_message
from services.forecast.settings import ForecastSettings
from services.forecast.training import prepare_series
from services.runtime.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.training.registry import ModelRegistry, PointerStamp
from services.training.sources import CandleSource


@dataclass(frozen=True, slots=True)
class PredictionInterval:
    """Lower and upper bounds, each of length `horizon`, covering the price with `level`% probability."""

    level: int
    lower: tuple[float, ...]
    upper: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast of the next `horizon` bars of `symbol`. `times` are bar open times (UTC) on the
    symbol's trading calendar; `point` the NHITS forecast of the close."""

    symbol: str
    timeframe: str
    model_version: str
    horizon: int
    last_candle_time: datetime
    last_close: float
    times: tuple[datetime, ...]
    point: tuple[float, ...]
    intervals: tuple[PredictionInterval, ...]
    generated_at: datetime
    cached: bool = False

    def interval(self, level: int) -> PredictionInterval:
        return next(i for i in self.intervals if i.level == level)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version in memory with what serving needs from its metadata."""

    symbol: str
    version: str
    stamp: PointerStamp
    forecaster: NHITSForecaster
    asset_class: str
    timeframe: str
    quantiles: dict[int, np.ndarray]  # {level: (h,)}, in units of `scale`
    scale: VolatilityScale
    #: The global model's id when this version is one (its symbols share one forecaster), else "".
    shared: str = ""

    @property
    def h(self) -> int:
        return self.forecaster.config.h

    @property
    def input_size(self) -> int:
        return self.forecaster.config.input_size


@dataclass(frozen=True, slots=True)
class _Full:
    """A cached full-horizon forecast; requests slice it to their horizon."""

    times: tuple[datetime, ...]
    point: np.ndarray  # (h,)
    bounds: dict[int, tuple[np.ndarray, np.ndarray]]  # {level: (lower (h,), upper (h,))}
    generated_at: datetime


@dataclass(slots=True)
class _Prepared:
    symbol: str
    model: LoadedModel
    history: np.ndarray  # the newest closes: (max(input_size, the scale's history),) or fewer
    last_time: pd.Timestamp
    last_close: float

    @property
    def window(self) -> np.ndarray:
        """The model's input: the newest `input_size` closes."""
        return self.history[-self.model.input_size :]


class ModelCache:
    """Current model per symbol, reloaded when the registry's pointer changes (one stat per use)."""

    def __init__(self, registry: ModelRegistry, *, threads: int = 1) -> None:
        self.registry = registry
        self.threads = threads
        self._models: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._shared: dict[str, NHITSForecaster] = {}  # global model id -> its forecaster
        self._shared_lock = threading.Lock()
        self._torch_ready = False
        self.loads = 0

    def prepare(self) -> None:
        """Import torch/neuralforecast and set the serving thread budget (seconds, once)."""
        if self._torch_ready:
            return
        import torch

        from services.forecast.model import quiet_lightning

        torch.set_num_threads(self.threads)
        with quiet_lightning():
            import neuralforecast.models  # noqa: F401
        self._torch_ready = True

    def _load(self, symbol: str, stamp: PointerStamp) -> LoadedModel:
        self.prepare()
        version = self.registry.get(symbol)
        meta = version.metadata
        shared = str(meta.get("global", {}).get("model_id", "")) if meta.get("scope") == "global" else ""
        if shared:  # a global model's symbols share its weights: load them once
            with self._shared_lock:
                forecaster = self._shared.get(shared)
                if forecaster is None:
                    forecaster = NHITSForecaster.load(version.path)
                    in_use = {m.shared for m in self._models.values()}
                    self._shared = {k: v for k, v in self._shared.items() if k in in_use}
                    self._shared[shared] = forecaster
        else:
            forecaster = NHITSForecaster.load(version.path)
        quantiles = {
            int(k): np.asarray(v, dtype=np.float64) for k, v in meta["intervals"]["quantiles"].items()
        }
        self.loads += 1
        return LoadedModel(
            symbol=symbol,
            version=version.version,
            stamp=stamp,
            forecaster=forecaster,
            asset_class=str(meta.get("asset_class", "FX")),
            timeframe=str(meta.get("timeframe", "H1")),
            quantiles=quantiles,
            scale=VolatilityScale.from_metadata(meta["intervals"]),
            shared=shared,
        )

    async def get(self, symbol: str) -> LoadedModel | None:
        """The current model of `symbol`, or None when it has none."""
        stamp = self.registry.pointer_stamp(symbol)
        if stamp is None:
            self._models.pop(symbol, None)
            return None
        cached = self._models.get(symbol)
        if cached is not None and cached.stamp == stamp:
            return cached
        lock = self._locks.setdefault(symbol, asyncio.Lock())
        async with lock:
            cached = self._models.get(symbol)
            if cached is not None and cached.stamp == stamp:
                return cached
            try:
                model = await asyncio.to_thread(self._load, symbol, stamp)
            except FailedPrecondition:
                return None
            self._models[symbol] = model
            return model

    def loaded(self) -> dict[str, str]:
        """symbol -> version currently in memory."""
        return {s: m.version for s, m in self._models.items()}


class Forecaster:
    """Forecasts for one symbol or many; see the module docstring."""

    def __init__(self, settings: ForecastSettings, source: CandleSource, registry: ModelRegistry) -> None:
        self.settings = settings
        self.source = source
        self.registry = registry
        self.models = ModelCache(registry, threads=settings.serving_threads)
        self._cache: OrderedDict[tuple[str, str, pd.Timestamp], _Full] = OrderedDict()
        self._stacks: OrderedDict[tuple[tuple[str, str], ...], StackedNHITS] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    async def warmup(self) -> int:
        """Import the libraries and load every current model now (instead of on the first
        forecast, which would pay seconds of imports); returns how many models were loaded."""
        await asyncio.to_thread(self.models.prepare)
        models = await asyncio.gather(*(self.models.get(s) for s in self.registry.trained_keys()))
        return sum(m is not None for m in models)

    async def forecast(self, symbol: str, horizon: int) -> Forecast:
        """Forecast `horizon` bars of `symbol`.

        InvalidArgument("horizon") outside 1..the model's trained horizon; NotFound for an unknown
        symbol; FailedPrecondition when the symbol has no model yet or too few candles.
        """
        result = (await self.forecast_many([symbol], horizon))[0]
        if isinstance(result, DomainError):
            raise result
        return result

    async def forecast_many(self, symbols: Sequence[str], horizon: int) -> list[Forecast | DomainError]:
        """Forecasts for many symbols in one call, in the order given; a symbol that cannot be
        forecast yields its error in its place. InvalidArgument for horizon < 1 (whole call)."""
        if horizon < 1:
            raise InvalidArgument("horizon", "must be >= 1")
        prepared: list[_Prepared | BaseException]
        if len(symbols) == 1:  # no task per symbol for the common single call
            try:
                prepared = [await self._prepare(symbols[0], horizon)]
            except DomainError as exc:
                prepared = [exc]
        else:
            prepared = await asyncio.gather(
                *(self._prepare(s, horizon) for s in symbols), return_exceptions=True
            )
        results: list[Forecast | DomainError | None] = []
        misses: list[_Prepared] = []
        for item in prepared:
            if isinstance(item, DomainError):
                results.append(item)
            elif isinstance(item, BaseException):
                raise item
            else:
                results.append(None)
                if self._cached(item) is None:
                    misses.append(item)
        fresh: dict[tuple[str, str, pd.Timestamp], _Full] = {}
        if misses:
            fresh = await asyncio.to_thread(self._compute, misses)
        out: list[Forecast | DomainError] = []
        for item, result in zip(prepared, results, strict=True):
            if result is not None:
                out.append(result)
                continue
            assert isinstance(item, _Prepared)
            key = (item.symbol, item.model.version, item.last_time)
            full = fresh.get(key)
            cached = full is None
            if full is None:
                full = self._cached(item)
                if full is None:  # evicted meanwhile
                    full = (await asyncio.to_thread(self._compute, [item]))[key]
                    cached = False
            if cached:
                self.hits += 1
            else:
                self.misses += 1
            out.append(self._slice(item, full, horizon, cached))
        return out

    async def _prepare(self, symbol: str, horizon: int) -> _Prepared:
        check_symbol(symbol)
        model = await self.models.get(symbol)
        if model is None:
            if await self.source.get_symbol(symbol) is None:
                raise NotFound(
                    f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
                )
            raise FailedPrecondition(no_model_message(symbol), reason="NO_MODEL", metadata={"symbol": symbol})
        if horizon > model.h:
            raise InvalidArgument(
                "horizon",
                f"must be between 1 and {model.h} (the trained maximum of {symbol} {model.version})",
            )
        need = max(model.input_size, model.scale.history)
        candles = await self.source.fetch(symbol, model.timeframe, limit=need)
        if len(candles) == 0 and await self.source.get_symbol(symbol) is None:
            raise NotFound(
                f"symbol {symbol} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": symbol}
            )
        last_time, close = latest_closes(candles)
        if len(close) < model.input_size:
            raise FailedPrecondition(
                f"{symbol} has {len(close)} {model.timeframe} candles, the model needs {model.input_size}",
                reason="NOT_ENOUGH_CANDLES",
            )
        return _Prepared(symbol, model, close[-need:], last_time, float(close[-1]))

    def _cached(self, item: _Prepared) -> _Full | None:
        key = (item.symbol, item.model.version, item.last_time)
        with self._cache_lock:
            full = self._cache.get(key)
            if full is not None:
                self._cache.move_to_end(key)
            return full

    def _compute(self, items: Sequence[_Prepared]) -> dict[tuple[str, str, pd.Timestamp], _Full]:
        """Forward passes and calendar times for cache misses (runs in a worker thread).

        The symbols of one global model are one batch through its forecaster; per-symbol models
        sharing one architecture are evaluated together (`StackedNHITS`, vmap over the stacked
        weights); the stacked weights of a recurring symbol set are kept for next time.
        """
        now = datetime.now(UTC)
        unique = {(i.symbol, i.model.version, i.last_time): i for i in items}
        groups: dict[tuple[NHITSConfig, str], list[_Prepared]] = {}
        for item in unique.values():
            groups.setdefault((item.model.forecaster.config, item.model.shared), []).append(item)
        out: dict[tuple[str, str, pd.Timestamp], _Full] = {}
        for (_, shared), group in groups.items():
            windows = np.stack([g.window for g in group])  # (M, input_size)
            if len(group) == 1 or shared:
                points = group[0].model.forecaster.predict_windows(windows)
            else:
                points = self._stacked([g.model for g in group]).predict(windows)  # (M, h)
            for item, point in zip(group, points, strict=True):
                model = item.model
                times = future_bar_times(model.asset_class, model.timeframe, item.last_time, model.h)
                width = float(model.scale.at(item.history, np.array([len(item.history)]))[0])
                bounds = {}
                for level, q in model.quantiles.items():
                    half = q[: model.h] * width
                    bounds[level] = (point - half, point + half)
                out[(item.symbol, model.version, item.last_time)] = _Full(times, point, bounds, now)
        with self._cache_lock:
            self._cache.update(out)
            while len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        return out

    def _stacked(self, models: Sequence[LoadedModel]) -> StackedNHITS:
        key = tuple((m.symbol, m.version) for m in models)
        with self._cache_lock:
            stacked = self._stacks.get(key)
            if stacked is not None:
                self._stacks.move_to_end(key)
                return stacked
        stacked = StackedNHITS([m.forecaster for m in models])
        with self._cache_lock:
            self._stacks[key] = stacked
            while len(self._stacks) > 4:
                self._stacks.popitem(last=False)
        return stacked

    @staticmethod
    def _slice(item: _Prepared, full: _Full, horizon: int, cached: bool) -> Forecast:
        intervals = tuple(
            PredictionInterval(level, _floats(lo[:horizon]), _floats(hi[:horizon]))
            for level, (lo, hi) in sorted(full.bounds.items())
        )
        return Forecast(
            symbol=item.symbol,
            timeframe=item.model.timeframe,
            model_version=item.model.version,
            horizon=horizon,
            last_candle_time=item.last_time.to_pydatetime(),
            last_close=item.last_close,
            times=full.times[:horizon],
            point=_floats(full.point[:horizon]),
            intervals=intervals,
            generated_at=full.generated_at,
            cached=cached,
        )

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "cached": len(self._cache),
            "models": self.models.loaded(),
        }


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@functools.lru_cache(maxsize=4096)
def future_bar_times(asset_class: str, timeframe: str, last: pd.Timestamp, h: int) -> tuple[datetime, ...]:
    """The h bar open times after `last` on the calendar (cached: symbols of one market share
    their last bar time, so a batch computes each distinct calendar walk once)."""
    times = calendar_for(asset_class).next_bars(last, timeframe_delta(timeframe), h)
    return tuple(t.to_pydatetime() for t in times)


_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def latest_closes(candles: pd.DataFrame) -> tuple[pd.Timestamp, np.ndarray]:
    """(last candle time UTC, closes (n,) float64) of clean candles, without pandas overhead when
    the frame is already sorted, unique and finite (the normal case); else via `prepare_series`."""
    close = candles["close"].to_numpy(dtype=np.float64, na_value=np.nan)
    array = candles["time"].array
    if len(close) and isinstance(array, pd.arrays.DatetimeArray):
        ns = array.asi8 * _UNIT_NS.get(array.unit, 1)
        if bool(np.all(np.diff(ns) > 0)) and bool(np.all(close > 0)):  # NaN compares False
            return pd.Timestamp(int(ns[-1]), tz="UTC"), close
    times, clean = prepare_series(candles)
    if len(clean) == 0:
        return pd.Timestamp(0, tz="UTC"), clean
    return pd.Timestamp(times[-1]), clean
