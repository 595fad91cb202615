"""The forecast's model store: the shared registry (services.training.registry), keyed by symbol."""

from __future__ import annotations

from pathlib import Path

from services.training.registry import SYMBOL_KEY, ModelRegistry

check_symbol = SYMBOL_KEY.check


def no_model_message(symbol: str) -> str:
    return (
        f"no model for {symbol} yet: train it with POST /api/v1/forecast/{symbol}/train "
        f"(or `kitrading train {symbol}`)"
    )


def forecast_registry(root: Path) -> ModelRegistry:
    return ModelRegistry(root, key=SYMBOL_KEY, no_model=no_model_message)
