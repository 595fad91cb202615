"""The rule-based detector and the follow-through figures on the bundled real candles."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import asdict
from functools import cache

import numpy as np
import pandas as pd
import pytest

from services.data.samples import SAMPLES, load_candles
from services.pattern.catalogue import CATALOGUE
from services.pattern.detector import detect
from services.pattern.followthrough import follow_through, wilson
from services.pattern.pivots import zigzag
from services.pattern.service import check_candles
from services.runtime.errors import InvalidArgument

SYMBOLS = [s.symbol for s in SAMPLES]


@cache
def frame(symbol: str) -> pd.DataFrame:
    bars = load_candles([s for s in SAMPLES if s.symbol == symbol])[symbol]
    out = pd.DataFrame([asdict(c) for c in bars])
    out["time"] = pd.to_datetime(out["time"], utc=True)
    return out


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_every_catalogue_type_is_found_on_every_bundled_series(symbol: str) -> None:
    found = detect(frame(symbol))
    counts = Counter(d.slug for d in found)
    assert set(counts) == {s.slug for s in CATALOGUE}, counts
    assert all(0.5 <= d.confidence <= 1.0 for d in found)
    assert all(
        d.start <= min(p.index for p in d.points) <= max(p.index for p in d.points) <= d.end for d in found
    )


def test_pivots_alternate_and_are_confirmed_later() -> None:
    f = frame("EURUSD")
    pivots = zigzag(f["high"].to_numpy(), f["low"].to_numpy(), f["close"].to_numpy())
    assert len(pivots) > 50
    assert all(a.kind != b.kind for a, b in itertools.pairwise(pivots))
    assert all(p.confirmed > p.index for p in pivots)


def test_no_look_ahead_a_pattern_known_at_t_uses_no_later_bar() -> None:
    f = frame("EURUSD")
    full = detect(f)
    cut = 3000
    # the future is replaced by something else: what was confirmed by bar `cut` stays the same
    altered = f.copy()
    future = altered.index >= cut + 1
    altered.loc[future, ["open", "high", "low", "close"]] = altered.loc[
        future, ["open", "high", "low", "close"]
    ].to_numpy()[::-1]
    before = [d for d in full if d.end <= cut]
    again = [d for d in detect(altered) if d.end <= cut]
    assert before == again and len(before) > 100


def test_follow_through_against_the_base_rate() -> None:
    f = frame("EURUSD")
    rows = follow_through(f, detect(f), horizon=24, holdout=0.3)
    assert [r.slug for r in rows] == [s.slug for s in CATALOGUE]
    for r in rows:
        assert 0 <= r.base_rate <= 1 and r.period_start == int(len(f) * 0.7)
        if r.count:
            assert r.hit_low <= r.hit_rate <= r.hit_high
        else:
            assert math.isnan(r.hit_rate)
    assert sum(r.count for r in rows) > 50
    low, high = wilson(5, 10)
    assert low < 0.5 < high and wilson(0, 0)[0] != wilson(0, 0)[0]  # NaN without samples


def test_bad_candles_name_the_field_and_index() -> None:
    good = frame("EURUSD").head(50).copy()
    check_candles(good)
    cases = []
    bad = good.copy()
    bad.loc[7, "close"] = np.nan
    cases.append((bad, "candles[7].close"))
    bad = good.copy()
    bad.loc[3, "high"] = bad.loc[3, "low"] - 0.01
    cases.append((bad, "candles[3].high"))
    bad = good.copy()
    bad.loc[10, "time"] = bad.loc[9, "time"]
    cases.append((bad, "candles[10].time"))
    for candles, field in cases:
        with pytest.raises(InvalidArgument) as error:
            check_candles(candles)
        assert error.value.violations[0].field == field
