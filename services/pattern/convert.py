"""Pattern domain values <-> kitrading.pattern.v1 messages (the servicer's only translation layer)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kitrading.common.v1 import market_pb2
from kitrading.pattern.v1 import request_response_pb2 as rr
from kitrading.pattern.v1 import resources_pb2 as pb
from services.pattern.catalogue import BEARISH, BULLISH, PatternSpec
from services.pattern.followthrough import FollowThrough
from services.pattern.service import Found, Result, ScanError, Status
from services.runtime.errors import InvalidArgument
from services.runtime.protos import timestamp
from services.training.convert import job_out, timeframe_out
from services.training.data_client import timeframe_name
from services.training.registry import ModelVersion

_DIRECTIONS = {BULLISH: pb.PATTERN_DIRECTION_BULLISH, BEARISH: pb.PATTERN_DIRECTION_BEARISH}
_ENGINES = {"rules": pb.PATTERN_ENGINE_RULES, "tcn": pb.PATTERN_ENGINE_TCN}
_CHOICES = {
    pb.PATTERN_ENGINE_CHOICE_UNSPECIFIED: "rules",
    pb.PATTERN_ENGINE_CHOICE_RULES: "rules",
    pb.PATTERN_ENGINE_CHOICE_TCN: "tcn",
    pb.PATTERN_ENGINE_CHOICE_BOTH: "both",
}


def engine_in(value: int) -> str:
    try:
        return _CHOICES[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument("engine", "must be a defined PatternEngineChoice") from None


def check_time_order(candles: Sequence[market_pb2.Candle]) -> None:
    """Caller-given candles must come oldest first, each time after the one before: INVALID_ARGUMENT
    naming the first candle out of order as the caller sent it (`candles[31].time`)."""
    previous: tuple[int, int] | None = None
    for i, c in enumerate(candles):
        key = (c.time.seconds, c.time.nanos)
        if previous is not None and key <= previous:
            raise InvalidArgument(
                f"candles[{i}].time", "times must be strictly increasing (oldest first, no repeats)"
            )
        previous = key


def timeframe_in(value: int) -> str:
    return timeframe_name(value) or ""


def direction_out(direction: str) -> pb.PatternDirection.ValueType:
    return _DIRECTIONS.get(direction, pb.PATTERN_DIRECTION_NEUTRAL)


def type_out(spec: PatternSpec) -> pb.PatternType:
    return pb.PatternType(
        pattern_type=spec.slug,
        display_name=spec.name,
        description=spec.definition,
        direction=direction_out(spec.direction),
        min_bars=spec.min_bars,
    )


def type_order(spec: PatternSpec) -> list[str]:
    return [spec.slug]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _set_time(field: Any, moment: datetime) -> None:
    """Fill a Timestamp field in place from a datetime, naive meaning UTC (no message built and
    copied: ~1 us instead of ~5 per field, thousands of fields in a detection reply)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    field.seconds = delta.days * 86_400 + delta.seconds
    field.nanos = delta.microseconds * 1000


def found_out(
    found: Found, engine: str, follow_cache: dict[int, pb.FollowThrough] | None = None
) -> pb.DetectedPattern:
    """One pattern. `follow_cache`: the FollowThrough messages already built in this reply, by the
    identity of their source (every pattern of a type shares its type's figures)."""
    d = found.detection
    out = pb.DetectedPattern(
        pattern_type=d.slug,
        confidence=d.confidence,
        direction=direction_out(d.direction),
        engine=_ENGINES[engine],
    )
    _set_time(out.start_time, found.start_time)
    _set_time(out.end_time, found.end_time)
    for p, t in zip(d.points, found.point_times, strict=True):
        point = out.key_points.add(price=p.price, role=p.role)
        _set_time(point.time, t)
    if found.follow is not None:
        key = id(found.follow)
        built = follow_cache.get(key) if follow_cache is not None else None
        if built is None:
            built = follow_out(found.follow, found.follow_period)
            if follow_cache is not None:
                follow_cache[key] = built
        out.follow_through.CopyFrom(built)
    return out


def follow_out(f: FollowThrough, period: tuple[Any, Any] | None = None) -> pb.FollowThrough:
    return pb.FollowThrough(
        horizon_bars=f.horizon,
        samples=f.count,
        hit_rate=f.hit_rate,
        hit_rate_low=f.hit_low,
        hit_rate_high=f.hit_high,
        mean_return=f.mean_return,
        mean_return_low=f.mean_low,
        mean_return_high=f.mean_high,
        base_rate=f.base_rate,
        base_mean_return=f.base_mean_return,
        period_start_time=timestamp(period[0]) if period else None,
        period_end_time=timestamp(period[1]) if period else None,
    )


def detection_out(result: Result) -> pb.PatternDetection:
    follow_cache: dict[int, pb.FollowThrough] = {}
    return pb.PatternDetection(
        symbol=result.symbol,
        timeframe=timeframe_out(result.timeframe),
        patterns=[found_out(f, f.engine, follow_cache) for f in result.patterns],
        model_version=result.model_version,
        bars=result.bars,
        window_start_time=timestamp(result.window_start),
        window_end_time=timestamp(result.window_end),
        engine=_ENGINES[result.engine],
        engine_note=result.note,
    )


def scan_out(results: list[Result], errors: list[ScanError]) -> rr.ScanPatternsResponse:
    return rr.ScanPatternsResponse(
        detections=[detection_out(r) for r in results],
        errors=[rr.ScanError(symbol=e.symbol, code=e.code, message=e.message) for e in errors],
    )


def _f(value: Any) -> float:
    return math.nan if value is None else float(value)


_FT_FIELDS = (
    "hit_rate", "hit_rate_low", "hit_rate_high", "mean_return", "mean_return_low",
    "mean_return_high", "base_rate", "base_mean_return",
)  # fmt: skip


def _ft_stored(row: dict[str, Any] | None) -> pb.FollowThrough | None:
    if not row:
        return None
    return pb.FollowThrough(
        horizon_bars=int(row.get("horizon_bars", 0)),
        samples=int(row.get("samples", 0)),
        **{k: _f(row.get(k)) for k in _FT_FIELDS},  # type: ignore[arg-type]
    )


def class_out(row: dict[str, Any]) -> pb.PatternClassMetrics:
    return pb.PatternClassMetrics(
        pattern_type=str(row.get("pattern_type", "macro")),
        support=int(row.get("support", 0)),
        predicted=int(row.get("predicted", 0)),
        precision=_f(row.get("precision")),
        recall=_f(row.get("recall")),
        f1=_f(row.get("f1")),
        pr_auc=_f(row.get("pr_auc")),
        threshold=_f(row.get("threshold")),
        brier=_f(row.get("brier")),
        calibration_error=_f(row.get("calibration_error")),
        train_positives=int(row.get("train_positives", 0)),
        tcn_follow_through=_ft_stored(row.get("tcn_follow_through")),
        rules_follow_through=_ft_stored(row.get("rules_follow_through")),
    )


def model_out(version: ModelVersion) -> pb.PatternModel:
    meta = version.metadata
    config = meta.get("config", {})
    evaluation = meta.get("evaluation", {})
    training = meta.get("training", {})
    return pb.PatternModel(
        version=version.version,
        active=version.current,
        create_time=timestamp(version.created_at),
        job_id=str(meta.get("job_id", "")),
        trigger=str(meta.get("trigger", "")),
        device=str(meta.get("device", "")),
        training_seconds=float(training.get("duration_s", 0.0)),
        steps=int(training.get("steps", 0)),
        window_bars=int(config.get("window", 0)),
        label_tolerance_bars=int(config.get("tolerance", 0)),
        embargo_bars=int(config.get("embargo", 0)),
        receptive_field_bars=int(config.get("receptive_field", 0)),
        channels=int(config.get("channels", 0)),
        levels=int(config.get("levels", 0)),
        kernel_size=int(config.get("kernel", 0)),
        series=[
            pb.PatternModelSeries(
                symbol=s["symbol"],
                timeframe=timeframe_out(s.get("timeframe")),
                bars=int(s.get("bars", 0)),
                first_time=timestamp(s.get("first_time")),
                last_time=timestamp(s.get("last_time")),
                test_start_time=timestamp(s.get("test_start_time")),
                train_windows=int(s.get("train_windows", 0)),
                validation_windows=int(s.get("validation_windows", 0)),
                test_windows=int(s.get("test_windows", 0)),
                detections=int(s.get("detections", 0)),
            )
            for s in meta.get("series", [])
        ],
        classes=[class_out(r) for r in evaluation.get("classes", [])],
        macro=class_out({"pattern_type": "macro", **evaluation.get("macro", {})}),
        label_definition=str(evaluation.get("label", "")),
        split_definition=str(evaluation.get("split", "")),
    )


def status_out(status: Status, version: ModelVersion | None) -> rr.GetPatternModelResponse:
    return rr.GetPatternModelResponse(
        model=model_out(version) if version is not None else None,
        ready=status.ready,
        status_message=status.message,
        job=job_out(status.job) if status.job is not None else None,
    )
