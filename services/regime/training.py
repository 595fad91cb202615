"""The regime trainer's worker side: fit the HMM (and the scorer), publish one version.

Runs in the training worker process (services.training.worker). Progress: one `Step` per HMM fit
(restart x candidate state count), then the scorer's boosting rounds (over all walk-forward folds,
scaled to `boosting_rounds` steps). The version holds `regime.json` (the HMM that names regimes),
`scorer.json` (the scorer and its own scoring HMM) and the evaluation in its metadata.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from services.regime.settings import RegimeSettings
from services.training.events import Emit, Phase, Step
from services.training.registry import SYMBOL_KEY, ModelRegistry
from services.training.trainer import TrainResult, WorkerContext

REGIME_FILE = "regime.json"
SCORER_FILE = "scorer.json"


@dataclass(frozen=True, slots=True)
class RegimeTask:
    """Everything the worker needs to train one symbol (picklable)."""

    job_id: str
    symbol: str
    timeframe: str
    candles: pd.DataFrame
    settings: RegimeSettings
    previous_states: list[dict[str, Any]] = field(default_factory=list)
    trigger: str = "manual"


def setup(context: WorkerContext) -> ModelRegistry:
    import hmmlearn  # noqa: F401  (pay the imports once, before "ready")
    import lightgbm  # noqa: F401

    return ModelRegistry(context.models_dir, key=SYMBOL_KEY)


def run(task: RegimeTask, registry: ModelRegistry, emit: Emit) -> TrainResult:
    from services.regime.naming import StateStats
    from services.regime.regimes import fit_regimes
    from services.regime.scoring import ScoringConfig, train_scorer

    s = task.settings
    started = time.monotonic()
    fits = s.restarts * (1 if s.n_states else 3)
    planned = fits + s.boosting_rounds
    rows = max(1, len(task.candles))
    emit(Phase("fitting regimes"))

    def on_restart(done: int, total: int, best: float) -> None:
        emit(Step(done, planned, train_loss=-best / rows))

    model = fit_regimes(
        task.candles,
        symbol=task.symbol,
        n_states=s.n_states or None,
        restarts=s.restarts,
        max_iter=s.max_iter,
        vol_window=s.vol_window,
        previous=[StateStats.from_dict(d) for d in task.previous_states],
        on_restart=on_restart,
    )
    hmm = model.hmm
    emit(Phase("scoring"))
    config = ScoringConfig(
        horizon=s.horizon,
        take_profit=s.take_profit,
        stop_loss=s.stop_loss,
        barrier_unit=s.barrier_unit,
        cost=s.cost,
        folds=s.folds,
        embargo=s.embargo,
        boosting_rounds=s.boosting_rounds,
        signal_step=s.signal_step,
    )

    def on_iteration(step: int, total: int) -> None:
        emit(Step(fits + round(step * s.boosting_rounds / max(total, 1)), planned))

    scoring_hmm = {
        "n_states": s.n_states or None,
        "restarts": s.restarts,
        "max_iter": s.max_iter,
        "vol_window": s.vol_window,
    }
    trained, evaluation = train_scorer(
        task.candles,
        symbol=task.symbol,
        timeframe=task.timeframe,
        config=config,
        hmm_options=scoring_hmm,
        on_iteration=on_iteration,
    )
    times = pd.to_datetime(task.candles["time"], utc=True)
    metadata: dict[str, Any] = {
        "symbol": task.symbol,
        "timeframe": task.timeframe,
        "job_id": task.job_id,
        "trigger": task.trigger,
        "created_at": datetime.now(UTC).isoformat(),
        "data": {
            "first_time": times.iloc[0].isoformat(),
            "last_time": times.iloc[-1].isoformat(),
            "bars": rows,
        },
        "hmm": {
            "n_states": hmm.n_states_,
            "log_likelihood": hmm.log_likelihood_,
            "bic": {str(k): v for k, v in hmm.bic_.items()},
            "converged": bool(hmm.converged_),
            "iterations": int(hmm.n_iter_),
            "states": [st.to_dict() for st in model.states],
            "expected_duration_bars": [float(d) for d in hmm.expected_durations_],
        },
        "scorer": {"config": trained.to_dict()["config"], "features": trained.scorer.feature_names_},
        "evaluation": evaluation,
        "training": {"steps": planned, "duration_s": round(time.monotonic() - started, 3)},
    }
    emit(Phase("publishing"))
    staged = registry.stage(task.symbol)
    try:
        Path(staged.path / REGIME_FILE).write_text(json.dumps(model.to_dict()))
        Path(staged.path / SCORER_FILE).write_text(json.dumps(trained.to_dict()))
        emit(Phase("committing"))
        version = registry.publish(staged, metadata)
    except BaseException:
        registry.discard(staged)
        raise
    registry.prune(task.symbol, s.keep_versions)
    return TrainResult(version.version, planned, version.metadata)
