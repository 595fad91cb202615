"""What every per-symbol trainer shares: its keys are the Data service's symbols.

A per-symbol `Trainer` (forecast NHITS, regime HMM) subclasses `SymbolTrainer` and supplies
`planned_steps` and `prepare`; the keys, their validation and staleness (from its settings'
`auto_retrain_days`) are here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from services.runtime.errors import FailedPrecondition, NotFound
from services.training.registry import ModelRegistry
from services.training.sources import CandleSource


class RetrainAge(Protocol):
    #: Model age (days) after which the scheduler retrains a symbol.
    @property
    def auto_retrain_days(self) -> float: ...


S = TypeVar("S", bound=RetrainAge)


class SymbolTrainer(Generic[S]):
    per_symbol = True

    def __init__(self, settings: S, source: CandleSource, registry: ModelRegistry) -> None:
        self.settings = settings
        self.source = source
        self.registry = registry

    async def check_keys(self, keys: Sequence[str]) -> list[str]:
        """The symbols, validated and de-duplicated; NotFound for one the Data service does not know."""
        names = list(dict.fromkeys(self.registry.check_key(k) for k in keys))
        for name in names:
            if await self.source.get_symbol(name) is None:
                raise NotFound(
                    f"symbol {name} not found", reason="SYMBOL_NOT_FOUND", metadata={"symbol": name}
                )
        return names

    async def all_keys(self) -> list[str]:
        """The active symbols."""
        return [s.symbol for s in await self.source.list_symbols() if s.active]

    async def stale_keys(self) -> list[str]:
        """Active symbols without a model or with one at least `auto_retrain_days` old."""
        out = []
        for symbol in await self.all_keys():
            age = self.model_age_days(symbol)
            if age is None or age >= self.settings.auto_retrain_days:
                out.append(symbol)
        return out

    def model_age_days(self, symbol: str) -> float | None:
        try:
            version = self.registry.get(symbol)
        except (FailedPrecondition, NotFound):
            return None
        return (datetime.now(UTC) - version.created_at).total_seconds() / 86400
