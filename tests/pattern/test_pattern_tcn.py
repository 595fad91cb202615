"""The pattern TCN without a server: inputs, labels, the time-based split (no look-ahead), metrics, a
tiny training and evaluation, the event stream retargeted at the model, and the domain's engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from services.data.samples import SAMPLES, load_frame
from services.pattern.detector import Detection, detect
from services.pattern.service import PatternDomain
from services.pattern.settings import PatternSettings
from services.pattern.tcn import (
    TCNConfig,
    average_precision,
    bar_features,
    build_model,
    class_metrics,
    events,
    label_matrix,
    split,
    windows,
)
from services.pattern.trainer import _has_new_bars, model_events
from services.pattern.training import SeriesData, build_series, train_and_evaluate
from services.runtime.errors import InvalidArgument
from services.training.events import Phase, Step, Validation
from services.training.registry import ModelVersion
from services.training.sources import DataEvent, InMemoryCandleSource, SymbolInfo, candles_from_ohlcv

TINY = TCNConfig(window=32, channels=8, levels=3, max_steps=15, batch_size=32)


@pytest.fixture(scope="module")
def eurusd() -> pd.DataFrame:
    spec = next(s for s in SAMPLES if s.symbol == "EURUSD")
    return candles_from_ohlcv(load_frame(spec)).iloc[-1500:].reset_index(drop=True)


@pytest.mark.parametrize("n", [200, 1000, 1501, 5000])
@pytest.mark.parametrize("window", [16, 32, 128])
def test_no_training_window_shares_a_bar_with_a_test_window(n: int, window: int) -> None:
    config = replace(TINY, window=window)
    s = split(n, config)
    assert s.test_start == int(n * (1 - config.holdout))
    if len(s.test):
        first_test_bar = s.test[0] - window + 1
        for part in (s.train, s.validation):
            if len(part):
                assert part.max() < first_test_bar, "a training window overlaps a test window"
                assert s.test[0] - part.max() >= config.embargo
        assert (s.test >= s.test_start).all() and s.test[-1] == n - 1
    if len(s.train) and len(s.validation):
        assert s.validation[0] - s.train.max() >= config.embargo
    assert (np.concatenate([s.train, s.validation, s.test]) >= window - 1).all()


def test_changing_the_test_period_changes_no_training_input_or_label(eurusd: pd.DataFrame) -> None:
    (before,) = build_series([SeriesData("EURUSD", "H1", eurusd)], TINY)
    shocked = eurusd.copy()
    rows = shocked.index >= before.split.test_start
    shocked.loc[rows, ["open", "high", "low", "close"]] *= 1.3  # a different future
    (after,) = build_series([SeriesData("EURUSD", "H1", shocked)], TINY)
    for part in ("train", "validation"):
        ends = getattr(before.split, part)
        assert np.array_equal(ends, getattr(after.split, part))
        assert np.array_equal(windows(before.raw, ends, 32), windows(after.raw, ends, 32))
        assert np.array_equal(before.labels[ends], after.labels[ends])


def test_inputs_are_normalised_inside_the_window(eurusd: pd.DataFrame) -> None:
    raw = bar_features(eurusd)
    scaled = eurusd.copy()
    scaled[["open", "high", "low", "close"]] *= 1000.0
    ends = np.array([31, 500, 1499])
    x = windows(raw, ends, 32)
    assert x.shape == (3, 5, 32) and x.dtype == np.float32
    assert np.allclose(x, windows(bar_features(scaled), ends, 32), atol=1e-4)  # scale free
    assert np.allclose(x[:, 3, -1], 0.0)  # the last close is the origin
    changed = raw.copy()
    changed[:468] *= 2  # bars before the window ending at 500
    assert np.array_equal(windows(changed, ends[1:2], 32), x[1:2])
    with pytest.raises(ValueError, match="window ends"):
        windows(raw, np.array([30]), 32)


def test_a_window_is_labelled_with_the_types_confirmed_within_the_tolerance() -> None:
    slugs = ("double_top", "breakout_up")
    found = [
        Detection("double_top", "bearish", 0.9, 3, 10, ()),
        Detection("breakout_up", "bullish", 0.7, 0, 19, ()),
    ]
    y = label_matrix(21, found, 2, slugs)
    assert np.flatnonzero(y[:, 0]).tolist() == [10, 11, 12]
    assert np.flatnonzero(y[:, 1]).tolist() == [19, 20]  # clipped at the series' end
    assert label_matrix(21, found, 0, slugs)[:, 0].sum() == 1


def test_metrics_match_their_definitions() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.1).astype(np.uint8)
    p = np.clip(y * 0.4 + rng.random(500) * 0.6, 0, 1)
    p[:50] = np.round(p[:50], 1)  # ties
    assert average_precision(y, p) == pytest.approx(average_precision_score(y, p))
    row = class_metrics(y, p, 0.5)
    pred = p >= 0.5
    tp = int((pred & (y == 1)).sum())
    assert row["precision"] == pytest.approx(tp / pred.sum()) and row["recall"] == pytest.approx(tp / y.sum())
    assert 0 <= row["calibration_error"] <= 1 and row["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert np.isnan(class_metrics(np.zeros(5, np.uint8), np.full(5, 0.2), 0.5)["recall"])


def test_events_are_the_first_bar_of_each_run_above_the_threshold() -> None:
    probs = np.array([[0.9], [0.2], [0.6], [0.7], [0.1], [0.8]])
    ends = np.arange(100, 106)
    assert events(probs, ends, [0.5], ["double_top"]) == [
        ("double_top", 100, 0.9),
        ("double_top", 102, 0.6),
        ("double_top", 105, 0.8),
    ]


def test_the_network_is_causal_and_sized_as_configured() -> None:
    import torch

    model = build_model(TINY).eval()
    assert TINY.receptive_field == 1 + 2 * 2 * 7
    x = torch.randn(2, 5, 32)
    # A step's features use no later step: cutting the future off changes nothing before it.
    with torch.no_grad():
        full = model.blocks(x)  # type: ignore[operator]
        cut = model.blocks(x[:, :, :20])  # type: ignore[operator]
    assert torch.allclose(full[:, :, :20], cut, atol=1e-6)
    assert model(x).shape == (2, 13)


def test_a_tiny_training_reports_every_type_on_the_test_period(eurusd: pd.DataFrame) -> None:
    seen: list[object] = []
    _, series, evaluation, seconds = train_and_evaluate(
        [SeriesData("EURUSD", "H1", eurusd)], TINY, emit=seen.append
    )
    assert [e.name for e in seen if isinstance(e, Phase)] == ["labelling", "training", "evaluating"]
    assert [e.step for e in seen if isinstance(e, Step)] == list(range(1, 16))
    assert any(isinstance(e, Validation) for e in seen)
    assert len(evaluation["classes"]) == 13 and len(evaluation["thresholds"]) == 13
    assert evaluation["test_windows"] == len(series[0].split.test)
    total_rules = 0
    for row in evaluation["classes"]:
        assert row["support"] == int(
            series[0].labels[series[0].split.test, TINY.slugs.index(row["pattern_type"])].sum()
        )
        rules = row["rules_follow_through"]
        assert rules["samples"] == sum(
            1
            for d in series[0].detections
            if d.slug == row["pattern_type"] and series[0].split.test_start <= d.end < len(eurusd) - 24
        )
        total_rules += rules["samples"]
        assert 0 <= rules["base_rate"] <= 1
    assert total_rules > 0 and evaluation["macro"]["types_with_support"] > 0
    assert seconds < 30


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 11, 20])
def test_every_allowed_step_count_trains(eurusd: pd.DataFrame, steps: int) -> None:
    """KITRADING_PATTERN_MAX_STEPS accepts 1..100000; 10 (10 % warm-up = 1 step) crashed OneCycleLR
    with ZeroDivisionError in the worker, and the service never published a model."""
    series = [SeriesData("EURUSD", "H1", eurusd.tail(1500))]
    trained, _, _, _ = train_and_evaluate(series, replace(TINY, max_steps=steps))
    assert trained is not None


async def test_data_events_retarget_the_one_model() -> None:
    async def stream(after: int) -> AsyncIterator[DataEvent]:
        yield DataEvent(after + 1, "CANDLES_INGESTED", "EURUSD", "H1")
        yield DataEvent(after + 2, "SYMBOL_ADDED", "", "")

    got = [e async for e in model_events(stream)(5)]
    assert [(e.event_id, e.symbol) for e in got] == [(6, "tcn"), (7, "")]


def test_a_version_is_stale_only_for_newer_candles(eurusd: pd.DataFrame) -> None:
    last = pd.Timestamp(eurusd["time"].iloc[-1]).isoformat()
    version = ModelVersion(
        "tcn",
        "v000001",
        Path("."),
        {"series": [{"symbol": "EURUSD", "timeframe": "H1", "last_time": last}]},
        True,
    )
    assert not _has_new_bars(version, [SeriesData("EURUSD", "H1", eurusd)])
    assert _has_new_bars(version, [SeriesData("GOOG", "D1", eurusd)])
    more = pd.concat([eurusd, eurusd.iloc[-1:].assign(time=eurusd["time"].iloc[-1] + pd.Timedelta(hours=1))])
    assert _has_new_bars(version, [SeriesData("EURUSD", "H1", more)])


async def test_the_domain_without_a_model_answers_with_the_rules(
    tmp_path: Path, eurusd: pd.DataFrame
) -> None:
    source = InMemoryCandleSource()
    source.put(SymbolInfo("EURUSD", timeframe="H1"), "H1", eurusd)
    domain = PatternDomain(PatternSettings(home=tmp_path, train_on_start=False, schedule=False), source)
    await domain.start()
    try:
        result = await domain.detect_symbol("EURUSD", engine="both")
        assert result.engine == "rules" and "no TCN is published yet" in result.note
        assert {f.engine for f in result.patterns} == {"rules"}
        with pytest.raises(InvalidArgument, match="engine"):
            await domain.detect_symbol("EURUSD", engine="magic")
        status = await domain.status()
        assert not status.ready and "no pattern TCN yet" in status.message
        with pytest.raises(InvalidArgument) as caught:
            await domain.train(["EURUSD"], max_steps=3)
        assert [v.field for v in caught.value.violations] == ["max_steps"]
    finally:
        await domain.stop()
    assert detect(eurusd)  # the fixture has patterns at all
