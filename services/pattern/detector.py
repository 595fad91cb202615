"""The rule-based detector: the catalogue's geometry (services.pattern.catalogue) on causal pivots.

`detect(frame)` returns every pattern whose last pivot is confirmed inside the frame, each ending at
its confirming bar (`end`): it uses bars <= end only, so a pattern found at bar t was knowable at t.
`confidence` is a geometric fit score in [0.5, 1] (how well the pivots meet the tolerances), not a
probability of what follows: for that, services.pattern.followthrough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.pattern.catalogue import BY_SLUG
from services.pattern.pivots import Pivot, atr, zigzag

#: Zig-zag threshold in ATRs.
PIVOT_THRESHOLD = 2.0
BREAKOUT_LOOKBACK = 20


@dataclass(frozen=True, slots=True)
class KeyPoint:
    index: int
    price: float
    role: str  # "shoulder", "head", "neckline", "high", "low", "pole", "level"...


@dataclass(frozen=True, slots=True)
class Detection:
    slug: str
    direction: str
    confidence: float
    start: int  # bar of the first key point
    end: int  # the confirming bar: the pattern is known from here on
    points: tuple[KeyPoint, ...]


def _fit(*errors: float) -> float:
    """1 for a perfect fit, 0.5 at the tolerance edge: errors are each |deviation| / tolerance <= 1."""
    worst = max(errors) if errors else 0.0
    return round(1.0 - 0.5 * min(1.0, max(0.0, worst)), 4)


Rule = Callable[[list[Pivot], float], tuple[float, tuple[KeyPoint, ...]] | None]


def _kp(p: Pivot, role: str) -> KeyPoint:
    return KeyPoint(p.index, p.price, role)


def _double(ps: list[Pivot], a: float, top: bool) -> tuple[float, tuple[KeyPoint, ...]] | None:
    p1, mid, p2 = ps[-3:]
    if p2.kind != ("H" if top else "L"):
        return None
    diff = abs(p1.price - p2.price) / a
    depth = (min(p1.price, p2.price) - mid.price) / a if top else (mid.price - max(p1.price, p2.price)) / a
    if diff > 0.75 or depth < 1.5:
        return None
    role = "top" if top else "bottom"
    return _fit(diff / 0.75), (_kp(p1, role), _kp(mid, "neckline"), _kp(p2, role))


def _head_shoulders(ps: list[Pivot], a: float, top: bool) -> tuple[float, tuple[KeyPoint, ...]] | None:
    s1, n1, head, n2, s2 = ps[-5:]
    if s2.kind != ("H" if top else "L"):
        return None
    sign = 1.0 if top else -1.0
    above = sign * (head.price - max(s1.price, s2.price) if top else head.price - min(s1.price, s2.price)) / a
    shoulders = abs(s1.price - s2.price) / a
    neck = abs(n1.price - n2.price) / a
    if above < 0.75 or shoulders > 1.0 or neck > 1.5:
        return None
    return _fit(shoulders / 1.0, neck / 1.5), (
        _kp(s1, "left shoulder"), _kp(n1, "neckline"), _kp(head, "head"),
        _kp(n2, "neckline"), _kp(s2, "right shoulder"),
    )  # fmt: skip


def _last_two(ps: list[Pivot]) -> tuple[Pivot, Pivot, Pivot, Pivot]:
    """(earlier high, later high, earlier low, later low) of the last four pivots."""
    highs = [p for p in ps[-4:] if p.kind == "H"]
    lows = [p for p in ps[-4:] if p.kind == "L"]
    return highs[0], highs[1], lows[0], lows[1]


def _lines(ps: list[Pivot], a: float) -> tuple[float, float, tuple[KeyPoint, ...]]:
    h1, h2, l1, l2 = _last_two(ps)
    points = tuple(
        _kp(p, "high" if p.kind == "H" else "low") for p in sorted((h1, h2, l1, l2), key=lambda p: p.index)
    )
    return (h2.price - h1.price) / a, (l2.price - l1.price) / a, points


def _triangle(kind: str) -> Rule:
    def rule(ps: list[Pivot], a: float) -> tuple[float, tuple[KeyPoint, ...]] | None:
        dh, dl, points = _lines(ps, a)
        if kind == "ascending" and abs(dh) <= 0.5 and dl >= 0.5:
            return _fit(abs(dh) / 0.5), points
        if kind == "descending" and abs(dl) <= 0.5 and dh <= -0.5:
            return _fit(abs(dl) / 0.5), points
        if kind == "symmetric" and dh <= -0.5 and dl >= 0.5:
            return _fit(abs(abs(dh) - abs(dl)) / max(abs(dh), abs(dl))), points
        return None

    return rule


def _wedge(rising: bool) -> Rule:
    def rule(ps: list[Pivot], a: float) -> tuple[float, tuple[KeyPoint, ...]] | None:
        dh, dl, points = _lines(ps, a)
        if rising and dh >= 0.25 and dl >= 0.25 and dl > dh:
            return _fit(dh / dl), points
        if not rising and dh <= -0.25 and dl <= -0.25 and dh < dl:
            return _fit(dl / dh), points
        return None

    return rule


def _flag(bull: bool) -> Rule:
    def rule(ps: list[Pivot], a: float) -> tuple[float, tuple[KeyPoint, ...]] | None:
        base, tip, pull, again = ps[-4:]
        if again.kind != ("H" if bull else "L"):
            return None
        sign = 1.0 if bull else -1.0
        pole = sign * (tip.price - base.price) / a
        if pole < 4.0:
            return None
        half = (tip.price + base.price) / 2
        inside = (
            (pull.price > half and again.price < tip.price)
            if bull
            else (pull.price < half and again.price > tip.price)
        )
        if not inside:
            return None
        retrace = sign * (tip.price - pull.price) / (sign * (tip.price - base.price))
        return _fit(retrace / 0.5), (_kp(base, "pole start"), _kp(tip, "pole top" if bull else "pole bottom"),
                                      _kp(pull, "flag"), _kp(again, "flag"))  # fmt: skip

    return rule


RULES: dict[str, tuple[int, Rule]] = {
    "double_top": (3, lambda ps, a: _double(ps, a, True)),
    "double_bottom": (3, lambda ps, a: _double(ps, a, False)),
    "head_and_shoulders": (5, lambda ps, a: _head_shoulders(ps, a, True)),
    "inverse_head_and_shoulders": (5, lambda ps, a: _head_shoulders(ps, a, False)),
    "ascending_triangle": (4, _triangle("ascending")),
    "descending_triangle": (4, _triangle("descending")),
    "symmetric_triangle": (4, _triangle("symmetric")),
    "rising_wedge": (4, _wedge(True)),
    "falling_wedge": (4, _wedge(False)),
    "bull_flag": (4, _flag(True)),
    "bear_flag": (4, _flag(False)),
}


def _breakouts(high: np.ndarray, low: np.ndarray, close: np.ndarray, a: np.ndarray) -> list[Detection]:
    w = BREAKOUT_LOOKBACK
    if len(close) <= w:
        return []
    prior_high = pd.Series(high).rolling(w).max().shift(1).to_numpy()
    prior_low = pd.Series(low).rolling(w).min().shift(1).to_numpy()
    with np.errstate(invalid="ignore"):
        up = close >= prior_high + 0.5 * a
        down = close <= prior_low - 0.5 * a
    out = []
    for slug, flags, level in (("breakout_up", up, prior_high), ("breakout_down", down, prior_low)):
        starts = np.flatnonzero(flags & ~np.concatenate([[False], flags[:-1]]))  # first bar of a run
        for t in starts:
            excess = abs(close[t] - level[t]) / max(float(a[t]), 1e-12)
            out.append(
                Detection(
                    slug,
                    BY_SLUG[slug].direction,
                    _fit(max(0.0, 1.5 - excess)),
                    int(t - w),
                    int(t),
                    (
                        KeyPoint(int(t - 1), float(level[t]), "level"),
                        KeyPoint(int(t), float(close[t]), "close"),
                    ),
                )
            )
    return out


def detect(frame: pd.DataFrame) -> list[Detection]:
    """Every pattern confirmed inside `frame` (columns high, low, close; oldest first), oldest first."""
    high = frame["high"].to_numpy(dtype=np.float64)
    low = frame["low"].to_numpy(dtype=np.float64)
    close = frame["close"].to_numpy(dtype=np.float64)
    if len(close) < 3:
        return []
    a = atr(high, low, close)
    pivots = zigzag(high, low, close, threshold=PIVOT_THRESHOLD)
    found: list[Detection] = []
    for k in range(len(pivots)):
        seen = pivots[: k + 1]
        last = seen[-1]
        unit = float(a[last.confirmed]) or 1e-12
        for slug, (need, rule) in RULES.items():
            if len(seen) < need:
                continue
            hit = rule(seen[-need:], unit)
            if hit is None:
                continue
            confidence, points = hit
            start = min(p.index for p in points)
            if last.confirmed - start + 1 < BY_SLUG[slug].min_bars:
                continue
            found.append(Detection(slug, BY_SLUG[slug].direction, confidence, start, last.confirmed, points))
    found += _breakouts(high, low, close, a)
    return sorted(found, key=lambda d: (d.end, d.slug))
