"""Pattern domain values <-> kitrading.pattern.v1 messages (the servicer's only translation layer)."""

from __future__ import annotations

from collections.abc import Sequence

from kitrading.common.v1 import market_pb2
from kitrading.pattern.v1 import request_response_pb2 as rr
from kitrading.pattern.v1 import resources_pb2 as pb
from services.pattern.catalogue import BEARISH, BULLISH, PatternSpec
from services.pattern.service import Found, Result, ScanError
from services.runtime.errors import InvalidArgument
from services.runtime.protos import timestamp
from services.training.convert import timeframe_out
from services.training.data_client import timeframe_name

_DIRECTIONS = {BULLISH: pb.PATTERN_DIRECTION_BULLISH, BEARISH: pb.PATTERN_DIRECTION_BEARISH}
_ENGINES = {"rules": pb.PATTERN_ENGINE_RULES, "tcn": pb.PATTERN_ENGINE_TCN}


def check_unique_times(candles: Sequence[market_pb2.Candle]) -> None:
    """Caller-given candles may come in any order (they are sorted, as everywhere in the mesh); two with
    the same time are INVALID_ARGUMENT naming the second as the caller sent it."""
    seen: set[tuple[int, int]] = set()
    for i, c in enumerate(candles):
        key = (c.time.seconds, c.time.nanos)
        if key in seen:
            raise InvalidArgument(f"candles[{i}].time", "two candles have the same time")
        seen.add(key)


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


def found_out(found: Found, engine: str) -> pb.DetectedPattern:
    d = found.detection
    out = pb.DetectedPattern(
        pattern_type=d.slug,
        confidence=d.confidence,
        start_time=timestamp(found.start_time),
        end_time=timestamp(found.end_time),
        direction=direction_out(d.direction),
        engine=_ENGINES[engine],
        key_points=[
            pb.KeyPoint(time=timestamp(t), price=p.price, role=p.role)
            for p, t in zip(d.points, found.point_times, strict=True)
        ],
    )
    if found.follow is not None:
        f = found.follow
        out.follow_through.CopyFrom(
            pb.FollowThrough(
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
                period_start_time=timestamp(found.follow_period[0]) if found.follow_period else None,
                period_end_time=timestamp(found.follow_period[1]) if found.follow_period else None,
            )
        )
    return out


def detection_out(result: Result) -> pb.PatternDetection:
    return pb.PatternDetection(
        symbol=result.symbol,
        timeframe=timeframe_out(result.timeframe),
        patterns=[found_out(f, result.engine) for f in result.patterns],
        model_version="rules-v1",
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
