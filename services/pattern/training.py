"""The pattern trainer's worker side: label, train the TCN, evaluate it, publish one version.

Runs in the training worker process (services.training.worker): the detector labels each series,
the TCN trains on the training windows of all of them (services.pattern.tcn), the per-type decision
thresholds are chosen on the validation windows, and the held-out test period is scored: per type
and macro precision / recall / F1 / PR-AUC against the detector's labels, the calibration of the
probabilities, and the follow-through of the TCN's signals beside the rules' and the base rate
(services.pattern.followthrough). Progress: one `Step` per optimiser step, a `Validation` a few
times. The version holds `tcn.pt` (the weights), `config.json` and the evaluation in its metadata.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.pattern.catalogue import BY_SLUG
from services.pattern.detector import Detection, detect
from services.pattern.followthrough import FollowThrough, pooled_follow_through
from services.pattern.tcn import (
    Series,
    TCNConfig,
    Trained,
    best_threshold,
    class_metrics,
    events,
    macro,
    predict,
    prepare_series,
    state_dict_cpu,
    windows,
)
from services.training.events import Emit, Phase, Step, Validation
from services.training.registry import MODEL_KEY, ModelRegistry
from services.training.trainer import TrainResult, WorkerContext

MODEL = "tcn"
WEIGHTS_FILE = "tcn.pt"
CONFIG_FILE = "config.json"


@dataclass(frozen=True, slots=True)
class SeriesData:
    symbol: str
    timeframe: str
    candles: pd.DataFrame


@dataclass(frozen=True, slots=True)
class PatternTask:
    """Everything the worker needs to train the TCN (picklable)."""

    job_id: str
    series: tuple[SeriesData, ...]
    config: TCNConfig
    follow_horizon: int = 24
    keep_versions: int = 5
    trigger: str = "manual"
    extra: dict[str, Any] = field(default_factory=dict)


def setup(context: WorkerContext) -> tuple[ModelRegistry, str]:
    import torch  # noqa: F401  (paid once, before "ready")

    device = f"cuda:{context.device_index or 0}" if context.accelerator == "gpu" else "cpu"
    return ModelRegistry(context.models_dir, key=MODEL_KEY), device


def build_series(data: Sequence[SeriesData], config: TCNConfig) -> list[Series]:
    return [
        prepare_series(d.symbol, d.timeframe, d.candles.reset_index(drop=True), config, detect(d.candles))
        for d in data
    ]


def _ft_dict(row: FollowThrough) -> dict[str, Any]:
    return {
        "samples": row.count,
        "hit_rate": row.hit_rate,
        "hit_rate_low": row.hit_low,
        "hit_rate_high": row.hit_high,
        "mean_return": row.mean_return,
        "mean_return_low": row.mean_low,
        "mean_return_high": row.mean_high,
        "base_rate": row.base_rate,
        "base_mean_return": row.base_mean_return,
        "horizon_bars": row.horizon,
    }


def evaluate(
    trained: Trained, series: Sequence[Series], *, device: str = "cpu", follow_horizon: int = 24
) -> dict[str, Any]:
    """Thresholds on validation, then the test-period figures (see the module docstring)."""
    config = trained.config
    slugs = config.slugs
    val_p, val_y, test_p, test_y = [], [], [], []
    per_series: list[tuple[Series, np.ndarray]] = []
    for s in series:
        if len(s.split.validation):
            inputs = windows(s.raw, s.split.validation, config.window)
            val_p.append(predict(trained.model, inputs, device=device))
            val_y.append(s.labels[s.split.validation])
        probs = predict(trained.model, windows(s.raw, s.split.test, config.window), device=device)
        per_series.append((s, probs))
        test_p.append(probs)
        test_y.append(s.labels[s.split.test])
    k = len(slugs)
    vp = np.concatenate(val_p) if val_p else np.zeros((0, k))
    vy = np.concatenate(val_y) if val_y else np.zeros((0, k))
    tp = np.concatenate(test_p) if test_p else np.zeros((0, k))
    ty = np.concatenate(test_y) if test_y else np.zeros((0, k))
    thresholds = [best_threshold(vy[:, j], vp[:, j]) if len(vp) else 0.5 for j in range(k)]
    # Follow-through of the TCN's signals and of the rules' detections on the same test periods.
    tcn_parts, rules_parts = [], []
    for s, probs in per_series:
        found = events(probs, s.split.test, thresholds, slugs)
        tcn_parts.append(
            (s.frame, [Detection(slug, BY_SLUG[slug].direction, p, t, t, ()) for slug, t, p in found])
        )
        rules_parts.append((s.frame, s.detections))
    holdout = config.holdout
    tcn_ft = {r.slug: r for r in pooled_follow_through(tcn_parts, horizon=follow_horizon, holdout=holdout)}
    rules_ft = {
        r.slug: r for r in pooled_follow_through(rules_parts, horizon=follow_horizon, holdout=holdout)
    }
    classes = []
    for j, slug in enumerate(slugs):
        row = class_metrics(ty[:, j], tp[:, j], thresholds[j])
        row["pattern_type"] = slug
        row["train_positives"] = int(trained.train_positives[j])
        row["validation_positives"] = int(vy[:, j].sum()) if len(vy) else 0
        row["pos_weight"] = float(trained.pos_weight[j])
        row["tcn_follow_through"] = _ft_dict(tcn_ft[slug])
        row["rules_follow_through"] = _ft_dict(rules_ft[slug])
        classes.append(row)
    return {
        "label": (
            f"window ending at t labelled with each type the rule-based detector confirms in "
            f"[t - {config.tolerance}, t]"
        ),
        "split": (
            f"per series: the last {holdout:.0%} of the bars is the test period; training and "
            f"validation windows end at least {config.embargo} bars (the window) before it; the "
            f"newest {config.validation_share:.0%} of that span is validation (thresholds only)"
        ),
        "test_windows": len(ty),
        "validation_windows": len(vy),
        "classes": classes,
        "macro": macro(classes),
        "thresholds": thresholds,
    }


def train_and_evaluate(
    data: Sequence[SeriesData],
    config: TCNConfig,
    *,
    device: str = "cpu",
    emit: Emit | None = None,
    follow_horizon: int = 24,
) -> tuple[Trained, list[Series], dict[str, Any], float]:
    from services.pattern.tcn import fit

    started = time.monotonic()
    say: Emit = emit or (lambda event: None)
    say(Phase("labelling"))
    series = build_series(data, config)
    say(Phase("training"))
    trained = fit(
        series,
        config,
        device=device,
        on_step=lambda step, total, loss: say(Step(step, total, train_loss=loss)),
        on_validation=lambda step, total, loss: say(Validation(step, total, loss)),
    )
    say(Phase("evaluating"))
    evaluation = evaluate(trained, series, device=device, follow_horizon=follow_horizon)
    return trained, series, evaluation, time.monotonic() - started


def _iso(value: Any) -> str:
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).isoformat()


def run(task: PatternTask, state: tuple[ModelRegistry, str], emit: Emit) -> TrainResult:
    import torch

    registry, device = state
    config = task.config
    trained, series, evaluation, seconds = train_and_evaluate(
        task.series, config, device=device, emit=emit, follow_horizon=task.follow_horizon
    )
    described = []
    for s in series:
        times = s.frame["time"]
        test_first = s.split.test[0] if len(s.split.test) else len(times) - 1
        described.append(
            {
                "symbol": s.symbol,
                "timeframe": s.timeframe,
                "bars": len(times),
                "first_time": _iso(times.iloc[0]),
                "last_time": _iso(times.iloc[-1]),
                "test_start_time": _iso(times.iloc[int(test_first)]),
                "train_windows": len(s.split.train),
                "validation_windows": len(s.split.validation),
                "test_windows": len(s.split.test),
                "detections": len(s.detections),
            }
        )
    metadata: dict[str, Any] = {
        "model": MODEL,
        "job_id": task.job_id,
        "trigger": task.trigger,
        "created_at": datetime.now(UTC).isoformat(),
        "device": device,
        "config": {**config.to_dict(), "embargo": config.embargo, "receptive_field": config.receptive_field},
        "series": described,
        "evaluation": _finite(evaluation),
        "training": {
            "steps": trained.steps,
            "duration_s": round(seconds, 3),
            "final_train_loss": trained.final_loss,
            "threads": torch.get_num_threads(),
        },
    }
    emit(Phase("publishing"))
    staged = registry.stage(MODEL)
    try:
        torch.save(state_dict_cpu(trained.model), staged.path / WEIGHTS_FILE)
        Path(staged.path / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
        emit(Phase("committing"))
        version = registry.publish(staged, metadata)
    except BaseException:
        registry.discard(staged)
        raise
    registry.prune(MODEL, task.keep_versions)
    return TrainResult(version.version, trained.steps, version.metadata)


def _finite(value: Any) -> Any:
    """NaN -> None, so metadata.json is strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
