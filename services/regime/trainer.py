"""The regime's `Trainer` on the shared machinery: per symbol, the HMM and then the signal scorer.

`prepare` (serving process) reads the symbol's candles and the previous version's state names, so a
retrain keeps its labels; `run` (worker process, services.regime.training) fits and publishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.regime.settings import RegimeSettings
from services.regime.training import RegimeTask
from services.runtime.errors import FailedPrecondition, NotFound
from services.training.jobs import TrainingJob
from services.training.registry import SYMBOL_KEY, ModelRegistry
from services.training.symbols import SymbolTrainer
from services.training.trainer import WorkerSpec

#: HMM state counts tried when the settings leave the choice to BIC.
BIC_CANDIDATES = 3


def no_model_message(symbol: str) -> str:
    return f"no regime model for {symbol} yet: train it with POST /api/v1/regime/train"


def regime_registry(root: Path) -> ModelRegistry:
    return ModelRegistry(root, key=SYMBOL_KEY, no_model=no_model_message)


class RegimeTrainer(SymbolTrainer[RegimeSettings]):
    model = "hmm"
    worker = WorkerSpec(
        setup="services.regime.training:setup", run="services.regime.training:run", torch=False
    )

    def planned_steps(self) -> int:
        s = self.settings
        fits = s.restarts * (1 if s.n_states else BIC_CANDIDATES)
        return fits + s.boosting_rounds

    async def prepare(self, key: str, job: TrainingJob) -> RegimeTask:
        info = await self.source.get_symbol(key)
        if info is None:
            raise NotFound(f"symbol {key} not found")
        timeframe = job.timeframe or info.timeframe or self.settings.timeframe
        candles = await self.source.fetch(key, timeframe, limit=self.settings.lookback or None)
        return RegimeTask(
            job_id=job.job_id,
            symbol=key,
            timeframe=timeframe,
            candles=candles,
            settings=self.settings,
            previous_states=self._previous_states(key),
            trigger=job.trigger,
        )

    def _previous_states(self, symbol: str) -> list[dict[str, Any]]:
        try:
            version = self.registry.get(symbol)
        except (FailedPrecondition, NotFound):
            return []
        return list(version.metadata.get("hmm", {}).get("states", []))
