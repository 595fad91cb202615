"""Regime domain values <-> kitrading.regime.v1 messages (the servicer's only translation layer)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from kitrading.regime.v1 import request_response_pb2 as rr
from kitrading.regime.v1 import resources_pb2 as pb
from services.regime.hmm import RegimeHMM
from services.regime.regimes import RegimeModel, RegimeView
from services.regime.scoring import ScoringConfig
from services.regime.segments import Segment
from services.regime.service import ModelSummary, ScoredSignal, Signal, Status
from services.runtime.protos import timestamp
from services.training.convert import job_out, timeframe_out
from services.training.data_client import timeframe_name
from services.training.registry import ModelVersion

_SIDES = {pb.SIGNAL_SIDE_BUY: "buy", pb.SIGNAL_SIDE_SELL: "sell"}
_UNITS = {pb.BARRIER_UNIT_ATR: "atr", pb.BARRIER_UNIT_PERCENT: "percent"}
_UNITS_OUT = {v: k for k, v in _UNITS.items()}


def regime_out(name: str) -> pb.Regime.ValueType:
    """A domain regime name ("BULL_TREND") as the enum; an unknown name is UNSPECIFIED."""
    try:
        return pb.Regime.Value(f"REGIME_{name}")
    except ValueError:
        return pb.REGIME_UNSPECIFIED


def timeframe_in(value: int) -> str:
    """The request's timeframe name, or "" when unset (the model's)."""
    return timeframe_name(value) or ""


# -- regimes --------------------------------------------------------------------------------------


def segment_out(segment: Segment) -> pb.RegimeSegment:
    return pb.RegimeSegment(
        regime=regime_out(segment.regime),
        start_time=timestamp(segment.start_time),
        end_time=timestamp(segment.end_time),
        bars=segment.bars,
        mean_probability=segment.mean_probability,
        mean_return=segment.mean_return,
        volatility=segment.volatility,
    )


def state_out(
    symbol: str, view: RegimeView, version: ModelVersion, hindsight: Sequence[Segment] = ()
) -> pb.RegimeState:
    transitions = [
        pb.RegimeTransition(
            from_regime=regime_out(src),
            to=[pb.RegimeProbability(regime=regime_out(dst), probability=p) for dst, p in row.items()],
        )
        for src, row in view.transition.items()
    ]
    durations = [
        pb.RegimeDuration(regime=regime_out(src), expected_bars=_duration(row.get(src, 0.0)))
        for src, row in view.transition.items()
    ]
    return pb.RegimeState(
        symbol=symbol,
        timeframe=timeframe_out(str(version.metadata.get("timeframe", "H1"))),
        regime=regime_out(view.regime),
        confidence=view.probability,
        probabilities=[
            pb.RegimeProbability(regime=regime_out(r), probability=p) for r, p in view.probabilities
        ],
        since_time=timestamp(view.since),
        history=[segment_out(s) for s in view.history],
        model_version=version.version,
        last_candle_time=timestamp(view.last_bar),
        transitions=transitions,
        expected_durations=durations,
        hindsight_history=[segment_out(s) for s in hindsight],
    )


def _duration(stay: float) -> float:
    return math.inf if stay >= 1.0 else 1.0 / (1.0 - stay)


def model_out(symbol: str, version: ModelVersion, model: RegimeModel) -> pb.RegimeModel:
    meta = version.metadata
    hmm_meta: dict[str, Any] = meta.get("hmm", {})
    hmm: RegimeHMM = model.hmm
    states = [
        pb.HmmState(
            index=i,
            regime=regime_out(s.label),
            mean_return=s.mean_return,
            volatility=s.volatility,
            expected_duration_bars=float(d),
        )
        for i, (s, d) in enumerate(zip(model.states, hmm.expected_durations_, strict=True))
    ]
    data = meta.get("data", {})
    return pb.RegimeModel(
        symbol=symbol,
        timeframe=timeframe_out(str(meta.get("timeframe", "H1"))),
        model_version=version.version,
        train_time=timestamp(version.created_at),
        training_bars=int(data.get("bars", 0)),
        log_likelihood=float(hmm_meta.get("log_likelihood", hmm.log_likelihood_)),
        states=states,
        n_states=int(hmm.n_states_),
        converged=bool(hmm_meta.get("converged", False)),
        iterations=int(hmm_meta.get("iterations", 0)),
        bic=[pb.BicScore(n_states=int(k), bic=float(v)) for k, v in sorted(hmm_meta.get("bic", {}).items())],
        data_start_time=timestamp(data.get("first_time")),
        data_end_time=timestamp(data.get("last_time")),
    )


def version_out(version: ModelVersion) -> pb.RegimeModelVersion:
    """A stored version's headline figures, from its metadata alone (no model file is read)."""
    meta = version.metadata
    evaluation: dict[str, Any] = meta.get("evaluation", {})
    return pb.RegimeModelVersion(
        symbol=version.key,
        timeframe=timeframe_out(str(meta.get("timeframe", "H1"))),
        model_version=version.version,
        active=version.current,
        create_time=timestamp(version.created_at),
        job_id=str(meta.get("job_id", "")),
        trigger=str(meta.get("trigger", "")),
        n_states=int(meta.get("hmm", {}).get("n_states", 0)),
        training_bars=int(meta.get("data", {}).get("bars", 0)),
        data_end_time=timestamp(meta.get("data", {}).get("last_time")),
        scores=_scores_out(evaluation.get("scores_calibrated", {})),
        edge=bool(evaluation.get("edge", False)),
        verdict=verdict(evaluation) if evaluation else "",
    )


# -- scorer ---------------------------------------------------------------------------------------


def barriers_out(config: ScoringConfig) -> pb.Barriers:
    return pb.Barriers(
        unit=_UNITS_OUT.get(config.barrier_unit, pb.BARRIER_UNIT_UNSPECIFIED),
        take_profit=config.take_profit,
        stop_loss=config.stop_loss,
    )


def _scores_out(d: dict[str, Any]) -> pb.ProbabilityScores:
    return pb.ProbabilityScores(
        samples=int(d.get("n", 0)),
        positive_rate=float(d.get("positive_rate", 0.0)),
        auc=float(d.get("auc", 0.0)),
        brier=float(d.get("brier", 0.0)),
        brier_base=float(d.get("brier_base", 0.0)),
        brier_skill=float(d.get("brier_skill", 0.0)),
        log_loss=float(d.get("log_loss", 0.0)),
        log_loss_base=float(d.get("log_loss_base", 0.0)),
        log_loss_skill=float(d.get("log_loss_skill", 0.0)),
    )


def verdict(evaluation: dict[str, Any]) -> str:
    """One sentence on what the walk-forward figures show, edge or none."""
    cal = evaluation.get("scores_calibrated", {})
    figures = (
        f"out-of-fold AUC {cal.get('auc', float('nan')):.3f}, Brier {cal.get('brier', float('nan')):.4f} "
        f"against {cal.get('brier_base', float('nan')):.4f} for the base rate"
    )
    if evaluation.get("edge"):
        return f"edge: the calibrated score beats the base rate ({figures})"
    return (
        f"no edge: the calibrated score does not beat the base rate ({figures}); read scores as the base rate"
    )


def evaluation_out(evaluation: dict[str, Any]) -> pb.ScorerEvaluation:
    return pb.ScorerEvaluation(
        calibrated=_scores_out(evaluation.get("scores_calibrated", {})),
        raw=_scores_out(evaluation.get("scores_raw", {})),
        reliability=[
            pb.ReliabilityBin(
                low=r["low"],
                high=r["high"],
                mean_predicted=r["mean_predicted"],
                observed_rate=r["observed_rate"],
                count=int(r["count"]),
            )
            for r in evaluation.get("reliability", [])
        ],
        backtest=[
            pb.StrategyResult(
                strategy=b["strategy"],
                trades=int(b["trades"]),
                hit_rate=b["hit_rate"],
                mean_return=b["mean_return"],
                total_return=b["total_return"],
                sharpe_per_trade=b["sharpe_per_trade"],
                sharpe_annualised=b["sharpe_annualised"],
                max_drawdown=b["max_drawdown"],
            )
            for b in evaluation.get("backtest", [])
        ],
        threshold=float(evaluation.get("threshold", 0.0)),
        edge=bool(evaluation.get("edge", False)),
        verdict=verdict(evaluation),
        base_predictor=str(evaluation.get("scores_calibrated", {}).get("base", "")),
    )


def scorer_out(version: ModelVersion, config: ScoringConfig) -> pb.ScorerModel:
    meta = version.metadata
    evaluation: dict[str, Any] = meta.get("evaluation", {})
    auc = evaluation.get("scores_calibrated", {}).get("auc")
    return pb.ScorerModel(
        model_version=version.version,
        train_time=timestamp(version.created_at),
        training_samples=int(evaluation.get("signals", 0)),
        features=list(meta.get("scorer", {}).get("features", [])),
        validation_auc=None if auc is None else float(auc),
        evaluation=evaluation_out(evaluation),
        horizon=config.horizon,
        barriers=barriers_out(config),
        cost=config.cost,
    )


def signal_in(request: rr.ScoreSignalRequest) -> Signal:
    barriers = request.barriers if request.HasField("barriers") else pb.Barriers()
    return Signal(
        symbol=request.symbol,
        side=_SIDES.get(request.side, ""),
        time=request.time.ToDatetime(tzinfo=UTC) if request.HasField("time") else None,
        timeframe=timeframe_in(request.timeframe),
        horizon=request.horizon,
        take_profit=barriers.take_profit,
        stop_loss=barriers.stop_loss,
        barrier_unit=_UNITS.get(barriers.unit, ""),
    )


def scored_out(scored: ScoredSignal, side: pb.SignalSide.ValueType) -> rr.ScoreSignalResponse:
    score = scored.score
    return rr.ScoreSignalResponse(
        symbol=scored.signal.symbol,
        side=side,
        timeframe=timeframe_out(scored.timeframe),
        score=score.probability,
        regime=regime_out(score.regime),
        features=[pb.ScoreFeature(name=n, value=v, contribution=c) for n, v, c in score.features],
        model_version=scored.version.version,
        last_candle_time=timestamp(scored.last_bar),
        expected_return=score.expected_return,
        signal_time=timestamp(scored.time),
        horizon=scored.config.horizon,
        barriers=barriers_out(scored.config),
        cost=scored.config.cost,
        regime_probability=score.regime_probability,
        edge=scored.edge,
    )


# -- status ---------------------------------------------------------------------------------------


def summary_out(model: ModelSummary) -> pb.RegimeModelSummary:
    return pb.RegimeModelSummary(
        symbol=model.symbol,
        timeframe=timeframe_out(model.timeframe),
        model_version=model.version.version,
        train_time=timestamp(model.version.created_at),
        edge=model.edge,
    )


def status_out(status: Status) -> rr.GetRegimeStatusResponse:
    return rr.GetRegimeStatusResponse(
        ready=status.ready,
        message=status.message,
        models=[summary_out(m) for m in status.models],
        training_job=None if status.job is None else job_out(status.job),
    )
