"""The forecast's `Trainer` (services.training.trainer): NHITS per symbol on the Data service's candles,
or (model scope "global") one NHITS across every active symbol of the symbol's timeframe.

`prepare` runs in the serving process: it reads the symbol's series and skips a `force=False`
retrain when the model is younger than NHITS_AUTO_RETRAIN_DAYS and no newer candle exists. The
task then trains in the worker process (services.forecast.training's `setup`/`run`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from services.forecast.settings import ForecastSettings
from services.forecast.training import SeriesInput, TrainTask
from services.runtime.errors import FailedPrecondition, NotFound
from services.training.jobs import TrainingJob
from services.training.symbols import SymbolTrainer
from services.training.trainer import Skip, WorkerSpec


class ForecastTrainer(SymbolTrainer[ForecastSettings]):
    model = "nhits"
    worker = WorkerSpec(setup="services.forecast.training:setup", run="services.forecast.training:run")

    def planned_steps(self) -> int:
        return self.settings.nhits.max_steps

    def scope(self, job: TrainingJob) -> str:
        """The job's model scope: its `scope` option, else KITRADING_FORECAST_MODEL_SCOPE."""
        return str(job.options.get("scope") or self.settings.model_scope)

    async def _candles(self, symbol: str, timeframe: str) -> pd.DataFrame:
        try:
            return await self.source.fetch(symbol, timeframe)
        except Exception as exc:
            raise RuntimeError(f"could not read candles of {symbol}: {exc}") from exc

    async def prepare(self, key: str, job: TrainingJob) -> TrainTask | Skip:
        info = await self.source.get_symbol(key)
        if info is None:
            raise NotFound(f"symbol {key} not found")
        timeframe = info.timeframe or self.settings.timeframe
        candles = await self._candles(key, timeframe)
        scope = self.scope(job)
        members: tuple[SeriesInput, ...] = ()
        if scope == "global":
            # Every active symbol of the timeframe (this one always): one model serves them all.
            peers = [
                s
                for s in await self.source.list_symbols()
                if s.active and (s.timeframe or self.settings.timeframe) == timeframe and s.symbol != key
            ]
            own = SeriesInput(info.symbol, info.asset_class, candles)
            others = [
                SeriesInput(p.symbol, p.asset_class, await self._candles(p.symbol, timeframe)) for p in peers
            ]
            members = (own, *others)
        if not job.force:
            reasons = [self.freshness(m.symbol, _last(m.candles), scope) for m in members] or [
                self.freshness(key, _last(candles), scope)
            ]
            if all(reasons):
                return Skip(
                    reasons[0] if len(reasons) == 1 else f"{reasons[0]} (and every symbol of its model)"
                )
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
            scope=scope,
            members=members,
        )

    # ---- staleness ------------------------------------------------------------------------------

    def freshness(self, symbol: str, last_candle: pd.Timestamp | None, scope: str = "symbol") -> str:
        """Why a force=False retrain may be skipped ("" when it must train, also when the current
        model is of the other scope)."""
        try:
            version = self.registry.get(symbol)
        except (FailedPrecondition, NotFound):
            return ""
        if version.metadata.get("scope", "symbol") != scope:
            return ""
        age = (datetime.now(UTC) - version.created_at).total_seconds() / 86400
        if age >= self.settings.auto_retrain_days:
            return ""
        trained_until = version.metadata.get("data", {}).get("last_time")
        if last_candle is not None and trained_until and last_candle > pd.Timestamp(trained_until):
            return ""
        return f"model {version.version} is {age:.1f} days old and no newer candles exist"


def _last(candles: pd.DataFrame) -> pd.Timestamp | None:
    return pd.Timestamp(pd.to_datetime(candles["time"], utc=True).max()) if len(candles) else None
