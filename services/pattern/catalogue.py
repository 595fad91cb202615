"""The chart patterns the service knows: slug, name, direction, the fewest bars, the geometry.

Every definition is on zig-zag pivots (services.pattern.pivots): alternating swing highs (H) and
lows (L), each confirmed once price has moved `threshold` ATRs away from it. Prices are compared in
ATR(14) units at the pattern's last pivot, so one tolerance fits every instrument and timeframe.
"""

from __future__ import annotations

from dataclasses import dataclass

BULLISH, BEARISH, NEUTRAL = "bullish", "bearish", "neutral"


@dataclass(frozen=True, slots=True)
class PatternSpec:
    slug: str
    name: str
    direction: str
    min_bars: int
    definition: str


CATALOGUE: tuple[PatternSpec, ...] = (
    PatternSpec(
        "double_top", "Double top", BEARISH, 10,
        "Pivots H1 L H2: the two highs within 0.75 ATR of each other, the low between them at least "
        "1.5 ATR below the lower high. Confirmed when H2 is confirmed (price fell away from it).",
    ),
    PatternSpec(
        "double_bottom", "Double bottom", BULLISH, 10,
        "Pivots L1 H L2: the two lows within 0.75 ATR of each other, the high between them at least "
        "1.5 ATR above the higher low.",
    ),
    PatternSpec(
        "head_and_shoulders", "Head and shoulders", BEARISH, 15,
        "Pivots H1 L1 H2 L2 H3: the head H2 at least 0.75 ATR above both shoulders H1 and H3, the "
        "shoulders within 1 ATR of each other, the neckline lows L1 and L2 within 1.5 ATR.",
    ),
    PatternSpec(
        "inverse_head_and_shoulders", "Inverse head and shoulders", BULLISH, 15,
        "Pivots L1 H1 L2 H2 L3: the head L2 at least 0.75 ATR below both shoulders, the shoulders "
        "within 1 ATR of each other, the neckline highs within 1.5 ATR.",
    ),
    PatternSpec(
        "ascending_triangle", "Ascending triangle", BULLISH, 15,
        "The last two highs flat (within 0.5 ATR) and the last two lows rising by at least 0.5 ATR, "
        "the range narrowing.",
    ),
    PatternSpec(
        "descending_triangle", "Descending triangle", BEARISH, 15,
        "The last two lows flat (within 0.5 ATR) and the last two highs falling by at least 0.5 ATR, "
        "the range narrowing.",
    ),
    PatternSpec(
        "symmetric_triangle", "Symmetric triangle", NEUTRAL, 15,
        "The last two highs falling and the last two lows rising, each by at least 0.5 ATR.",
    ),
    PatternSpec(
        "bull_flag", "Bull flag", BULLISH, 8,
        "A pole: a rise of at least 4 ATR into a high H, then a pullback whose low and next high stay in "
        "the pole's upper half, sloping down (the next high below H).",
    ),
    PatternSpec(
        "bear_flag", "Bear flag", BEARISH, 8,
        "A pole: a fall of at least 4 ATR into a low L, then a bounce whose high and next low stay in "
        "the pole's lower half, sloping up (the next low above L).",
    ),
    PatternSpec(
        "rising_wedge", "Rising wedge", BEARISH, 15,
        "The last two highs and the last two lows both rising (by at least 0.25 ATR), the lows rising "
        "faster than the highs: a narrowing up-channel.",
    ),
    PatternSpec(
        "falling_wedge", "Falling wedge", BULLISH, 15,
        "The last two highs and the last two lows both falling, the highs falling faster than the "
        "lows: a narrowing down-channel.",
    ),
    PatternSpec(
        "breakout_up", "Breakout up", BULLISH, 21,
        "A close at least 0.5 ATR above the highest high of the 20 bars before it.",
    ),
    PatternSpec(
        "breakout_down", "Breakout down", BEARISH, 21,
        "A close at least 0.5 ATR below the lowest low of the 20 bars before it.",
    ),
)  # fmt: skip

BY_SLUG = {spec.slug: spec for spec in CATALOGUE}
