"""Bundled real market data: five public data sets shipped inside Python packages.

| symbol | timeframe | package | file in the package | official loader |
|---|---|---|---|---|
| EURUSD | H1 | backtesting | backtesting/test/EURUSD.csv | `backtesting.test.EURUSD` |
| GOOG | D1 | backtesting | backtesting/test/GOOG.csv | `backtesting.test.GOOG` |
| SP500 | D1 | arch | arch/data/sp500/sp500.csv.gz | `arch.data.sp500.load()` |
| NASDAQ | D1 | arch | arch/data/nasdaq/nasdaq.csv.gz | `arch.data.nasdaq.load()` |
| MSFT | D1 | pmdarima | pmdarima/datasets/data/msft.tar.gz | `pmdarima.datasets.load_msft()` |

The files are read directly with the same pandas calls the official loaders use (the test suite checks
that the frames are equal): importing the three packages would cost seconds of start-up, reading
the files almost nothing. All five carry real OHLCV columns (arch's also `Adj Close`, which is not
used; MSFT's `OpenInt` is always 0 and dropped). Times carry no zone in the files and are taken as
UTC; daily bars are stamped at 00:00 UTC of their date.

Import is idempotent: a data set whose stored series already matches (count, first and last time) is
not rewritten. Each data set is written in one transaction with a SYMBOL_ADDED event (when the symbol
is new) and one CANDLES_INGESTED event; no MARKET_EVENTs are emitted for this history (see ingest.py
and docs/data.md). A symbol that exists with another source (the user's own EURUSD, say) is left
alone and the data set is skipped.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.data.events import EventBus
from services.data.ingest import CandleIngestor, normalize_candles
from services.data.models import (
    AssetClass,
    Candle,
    EventType,
    NewEvent,
    SampleDataset,
    Symbol,
    Timeframe,
)
from services.data.stats import validate_candles
from services.data.storage import Repository
from services.runtime.database import DatabasePool

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """Where one bundled data set lives and what symbol it becomes."""

    symbol: str
    timeframe: Timeframe
    package: str
    path: str  # inside the package's directory; a `.tar.gz` holds one CSV
    asset_class: AssetClass
    display_name: str
    description: str

    @property
    def source(self) -> str:
        return f"sample:{self.package}"


SAMPLES: tuple[SampleSpec, ...] = (
    SampleSpec(
        "EURUSD",
        Timeframe.H1,
        "backtesting",
        "test/EURUSD.csv",
        AssetClass.FX,
        "Euro / US Dollar",
        "Hourly EUR/USD bars, Apr 2017 - Feb 2018 (backtesting.test.EURUSD).",
    ),
    SampleSpec(
        "GOOG",
        Timeframe.D1,
        "backtesting",
        "test/GOOG.csv",
        AssetClass.EQUITY,
        "Alphabet (Google)",
        "Daily NASDAQ:GOOG bars, 2004 - 2013 (backtesting.test.GOOG).",
    ),
    SampleSpec(
        "SP500",
        Timeframe.D1,
        "arch",
        "data/sp500/sp500.csv.gz",
        AssetClass.INDEX,
        "S&P 500",
        "Daily S&P 500 index bars, 1999 - 2018 (arch.data.sp500).",
    ),
    SampleSpec(
        "NASDAQ",
        Timeframe.D1,
        "arch",
        "data/nasdaq/nasdaq.csv.gz",
        AssetClass.INDEX,
        "NASDAQ Composite",
        "Daily NASDAQ Composite index bars, 1999 - 2018 (arch.data.nasdaq).",
    ),
    SampleSpec(
        "MSFT",
        Timeframe.D1,
        "pmdarima",
        "datasets/data/msft.tar.gz",
        AssetClass.EQUITY,
        "Microsoft",
        "Daily MSFT bars, 1986 - 2017, prices as adjusted in the Kaggle source "
        "(pmdarima.datasets.load_msft).",
    ),
)


def sample_file(spec: SampleSpec) -> Path | None:
    """The data file of `spec`, or None when its package is not installed (without importing it)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / spec.path
    return path if path.exists() else None


def load_frame(spec: SampleSpec) -> pd.DataFrame:
    """The data set as a DataFrame: DatetimeIndex, columns Open, High, Low, Close, Volume (+ extras)."""
    import pandas as pd

    path = sample_file(spec)
    if path is None:
        raise FileNotFoundError(f"package {spec.package} with {spec.path} is not installed")
    if path.name.endswith(".tar.gz"):
        with tarfile.open(path, "r:*") as tar:
            member = tar.extractfile(tar.getnames()[0])
            assert member is not None
            return pd.read_csv(member, index_col=0, parse_dates=True)
    return pd.read_csv(path, index_col=0, parse_dates=True)


def frame_to_candles(frame: pd.DataFrame) -> list[Candle]:
    """Candles (UTC, oldest first) from a frame with Open/High/Low/Close/Volume columns."""
    index = frame.index.tz_localize("UTC") if frame.index.tz is None else frame.index.tz_convert("UTC")
    columns = [frame[name].to_numpy(dtype="float64") for name in ("Open", "High", "Low", "Close", "Volume")]
    return [
        Candle(t, float(o), float(h), float(lo), float(c), float(v))
        for t, o, h, lo, c, v in zip(index.to_pydatetime(), *columns, strict=True)
    ]


def load_candles(specs: Sequence[SampleSpec]) -> dict[str, list[Candle]]:
    """Candles of each installed data set in `specs`, by symbol. Blocking: run it in a thread."""
    out: dict[str, list[Candle]] = {}
    for spec in specs:
        if sample_file(spec) is None:
            logger.warning("sample %s skipped: package %s not installed", spec.symbol, spec.package)
            continue
        out[spec.symbol] = frame_to_candles(load_frame(spec))
    return out


class SampleImporter:
    """Imports the bundled data sets through the normal candle ingestion path."""

    def __init__(self, pool: DatabasePool, repo: Repository, ingestor: CandleIngestor) -> None:
        self._pool = pool
        self._repo = repo
        self._ingestor = ingestor

    async def import_all(self, *, only_new: bool = False) -> list[SampleDataset]:
        """Import every data set (or, with `only_new`, those never imported before).

        Returns the data sets now present; skipped ones (package missing, symbol owned by another
        source) are left out.
        """
        specs = list(SAMPLES)
        if only_new:
            specs = [s for s in specs if not await self._was_imported(s)]
        if not specs:
            return []
        started = time.perf_counter()
        loaded = await asyncio.to_thread(load_candles, specs)
        out = []
        for spec in specs:
            candles = loaded.get(spec.symbol)
            if candles is not None and await self._import_one(spec, candles):
                out.append(SampleDataset(spec.symbol, spec.timeframe, spec.package, len(candles)))
        logger.info("sample import: %d data sets in %.2f s", len(out), time.perf_counter() - started)
        return out

    async def _was_imported(self, spec: SampleSpec) -> bool:
        async with self._pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM data.sample_imports WHERE symbol = $1 AND timeframe = $2)",
                    spec.symbol,
                    spec.timeframe.value,
                )
            )

    async def _import_one(self, spec: SampleSpec, candles: list[Candle]) -> bool:
        validate_candles(candles, f"samples.{spec.symbol}")
        ordered = normalize_candles(candles)
        async with self._pool.transaction() as conn:
            events: list[NewEvent] = []
            existing = await self._repo.get_symbol(conn, spec.symbol, lock=True)
            if existing is None:
                symbol = Symbol(
                    spec.symbol, spec.display_name, spec.asset_class, True, spec.description, spec.source
                )
                await self._repo.insert_symbol(conn, symbol)
                events.append(NewEvent(EventType.SYMBOL_ADDED, spec.symbol))
            elif existing.source != spec.source:
                logger.warning(
                    "sample %s skipped: symbol exists with source %r", spec.symbol, existing.source
                )
                return False
            await conn.execute(
                """INSERT INTO data.sample_imports (symbol, timeframe, package, candles)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (symbol, timeframe) DO UPDATE SET candles = $4, import_time = now()""",
                spec.symbol,
                spec.timeframe.value,
                spec.package,
                len(ordered),
            )
            series = await self._repo.get_series(conn, spec.symbol, spec.timeframe)
            unchanged = series is not None and (series.count, series.first_time, series.last_time) == (
                len(ordered),
                ordered[0].time,
                ordered[-1].time,
            )
            if unchanged:
                await EventBus.write(conn, events)  # events last: see events.py
            else:
                await self._ingestor.ingest_in(
                    conn, spec.symbol, spec.timeframe, ordered, detect=False, extra_events=events
                )
        return True
