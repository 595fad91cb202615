"""The forecast's `Trainer` (services.training.trainer): NHITS per symbol on the Data service's candles.

`prepare` runs in the serving process: it reads the symbol's series and skips a `force=False`
retrain when the model is younger than NHITS_AUTO_RETRAIN_DAYS and no newer candle exists. The
task then trains in the worker process (services.forecast.training's `setup`/`run`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from services.forecast.settings import ForecastSettings
from services.forecast.training import TrainTask
from services.runtime.errors import FailedPrecondition, NotFound
from services.training.jobs import TrainingJob
from services.training.symbols import SymbolTrainer
from services.training.trainer import Skip, WorkerSpec


class ForecastTrainer(SymbolTrainer[ForecastSettings]):
    model = "nhits"
    worker = WorkerSpec(setup="services.forecast.training:setup", run="services.forecast.training:run")

    def planned_steps(self) -> int:
        return self.settings.nhits.max_steps

    async def prepare(self, key: str, job: TrainingJob) -> TrainTask | Skip:
        info = await self.source.get_symbol(key)
        if info is None:
            raise NotFound(f"symbol {key} not found")
        timeframe = info.timeframe or self.settings.timeframe
        try:
            candles = await self.source.fetch(key, timeframe)
        except Exception as exc:
            raise RuntimeError(f"could not read candles: {exc}") from exc
        last = pd.Timestamp(pd.to_datetime(candles["time"], utc=True).max()) if len(candles) else None
        if not job.force:
            reason = self.freshness(key, last)
            if reason:
                return Skip(reason)
        s = self.settings
        return TrainTask(
            job_id=job.job_id,
            symbol=info.symbol,
            asset_class=info.asset_class,
            timeframe=timeframe,
            candles=candles,
            config=s.nhits,
            eval_windows=s.eval_windows,
            eval_step=s.eval_step,
            calibration_windows=s.calibration_windows,
            min_train_windows=s.min_train_windows,
            interval_windows=s.interval_windows,
            baselines=s.baselines,
            baseline_input_size=s.baseline_input_size,
            keep_versions=s.keep_versions,
            extra_metadata={"trigger": job.trigger},
        )

    # ---- staleness ------------------------------------------------------------------------------

    def freshness(self, symbol: str, last_candle: pd.Timestamp | None) -> str:
        """Why a force=False retrain may be skipped ("" when it must train)."""
        try:
            version = self.registry.get(symbol)
        except (FailedPrecondition, NotFound):
            return ""
        age = (datetime.now(UTC) - version.created_at).total_seconds() / 86400
        if age >= self.settings.auto_retrain_days:
            return ""
        trained_until = version.metadata.get("data", {}).get("last_time")
        if last_candle is not None and trained_until and last_candle > pd.Timestamp(trained_until):
            return ""
        return f"model {version.version} is {age:.1f} days old and no newer candles exist"
