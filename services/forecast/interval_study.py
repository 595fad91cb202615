"""How the intervals' volatility scale was chosen: candidates scored on the bundled series.

    .venv/bin/python -m services.forecast.interval_study [--scope symbol|global] [--max-steps 300]

Fits NHITS on the five bundled series exactly as a training does (defaults, fixed seed; per
symbol, or one model per timeframe with `--scope global`), forecasts every origin once, and scores
each candidate `VolatilityScale` with the served calibration (expanding conformal quantiles over
every fully observed earlier origin) on two sets of origins:

- **history**: every 24th origin from 500 calibration origins on to the test segment. These are
  the bars the choice is made on: they come before the test windows, so choosing on them does not
  look at the test period (they are in-sample for the model; see docs/models.md).
- **test**: the 20 held-out test windows the model table reports.

Per candidate: mean |coverage - nominal| over the series (points) and the mean ratio of its
interval score to the 48-bar scale's, on each set; the number of series whose test coverage is
inside 77-83 % (80 %) and 93-97 % (95 %); each series' test coverage at 80 %. docs/models.md,
"Interval method", has the output.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.forecast.evaluation import (
    DEFAULT_SCALE,
    SHORT_SCALE,
    VolatilityScale,
    expanding_quantiles,
    targets_at,
    windows_at,
)
from services.forecast.significance import interval_score

#: Candidates: (short lookback, long lookback, weight of the short variance); (n, 0, 1) is one window.
CANDIDATES: tuple[VolatilityScale, ...] = (
    SHORT_SCALE,
    VolatilityScale(168, 0, 1.0),
    VolatilityScale(480, 0, 1.0),
    *(VolatilityScale(a, b, w) for a in (24, 48) for b in (168, 480, 960) for w in (0.5, 0.75)),
)
BANDS = {80: (0.77, 0.83), 95: (0.93, 0.97)}


@dataclass(frozen=True, slots=True)
class SeriesForecasts:
    """One series' forecasts at every origin from `origins[0]` (step 1) and its test origins."""

    symbol: str
    y: np.ndarray
    origins: np.ndarray
    predicted: np.ndarray  # (len(origins), h)
    test_origins: np.ndarray
    h: int


def figures(
    series: SeriesForecasts, scale: VolatilityScale, at: np.ndarray, window: int = 5000
) -> dict[int, tuple[float, float]]:
    """{level: (coverage, interval score)} of the forecasts from origins `at`, each calibrated on
    the earlier fully observed origins' scores under `scale`."""
    s = series
    actual = targets_at(s.y, s.origins, s.h)
    widths = scale.at(s.y, s.origins)
    scores = np.abs(actual - s.predicted) / widths[:, None]
    rows = at - s.origins[0]
    out = {}
    for level in BANDS:
        per_origin = [expanding_quantiles(scores, s.origins, int(t), s.h, window, (level,)) for t in at]
        q = np.stack([p[level] for p in per_origin])
        half = q * widths[rows, None]
        lo, hi, truth = s.predicted[rows] - half, s.predicted[rows] + half, actual[rows]
        out[level] = (float(np.mean((truth >= lo) & (truth <= hi))), interval_score(truth, lo, hi, level))
    return out


def history_origins(series: SeriesForecasts, warmup: int = 500) -> np.ndarray:
    first = int(series.origins[0]) + warmup + series.h
    return np.arange(first, int(series.test_origins[0]) - series.h + 1, series.h)


def study(all_series: Sequence[SeriesForecasts], candidates: Sequence[VolatilityScale] = CANDIDATES) -> str:
    """The markdown table described in the module docstring."""
    base = {
        s.symbol: (figures(s, SHORT_SCALE, history_origins(s)), figures(s, SHORT_SCALE, s.test_origins))
        for s in all_series
    }
    lines = [
        "| scale | history: mean dev. 80 / 95 (points) | history: interval score 80 / 95 vs 48-bar "
        "| test: series inside 80 / 95 | test: interval score 80 / 95 vs 48-bar | test coverage 80 % ("
        + ", ".join(s.symbol for s in all_series)
        + ") |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for scale in candidates:
        hist = {s.symbol: figures(s, scale, history_origins(s)) for s in all_series}
        test = {s.symbol: figures(s, scale, s.test_origins) for s in all_series}

        def dev(table: dict[str, dict[int, tuple[float, float]]], level: int) -> float:
            return 100 * float(np.mean([abs(t[level][0] - level / 100) for t in table.values()]))

        def ratio(table: dict[str, dict[int, tuple[float, float]]], which: int, level: int) -> float:
            return float(np.mean([table[k][level][1] / base[k][which][level][1] for k in table]))

        inside = [sum(BANDS[lv][0] <= t[lv][0] <= BANDS[lv][1] for t in test.values()) for lv in BANDS]
        name = f"{scale.lookback}-bar"
        if scale.long_lookback:
            w = scale.short_weight
            name = f"{w:g} x {scale.lookback} + {1 - w:g} x {scale.long_lookback}"

        if scale == DEFAULT_SCALE:
            name = f"**{name} (served)**"
        lines.append(
            f"| {name} | {dev(hist, 80):.2f} / {dev(hist, 95):.2f} | {ratio(hist, 0, 80):.3f} / "
            f"{ratio(hist, 0, 95):.3f} | {inside[0]} / {inside[1]} | {ratio(test, 1, 80):.3f} / "
            f"{ratio(test, 1, 95):.3f} | "
            + ", ".join(f"{test[s.symbol][80][0] * 100:.1f}" for s in all_series)
            + " |"
        )
    return "\n".join(lines) + "\n"


def bundled_forecasts(scope: str, max_steps: int | None = None) -> list[SeriesForecasts]:
    """Fit NHITS (defaults) on the bundled series as a training would and forecast every origin."""
    from services.data.samples import SAMPLES, load_frame
    from services.forecast.model import NHITSForecaster
    from services.forecast.settings import ForecastSettings
    from services.forecast.training import global_training_inputs, prepare_series, split_for
    from services.training.sources import candles_from_ohlcv

    settings = ForecastSettings()
    cfg = settings.with_nhits(max_steps=max_steps).nhits if max_steps else settings.nhits
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for spec in SAMPLES:  # the five bundled series
        _, y = prepare_series(candles_from_ohlcv(load_frame(spec)))
        key = spec.timeframe.name if scope == "global" else spec.symbol
        groups.setdefault(key, []).append((spec.symbol, y))
    out = []
    for members in groups.values():
        splits = [split_for(len(y), cfg, settings) for _, y in members]
        inputs, val_size = global_training_inputs([y for _, y in members], splits)
        model = NHITSForecaster(cfg, accelerator="cpu").fit_many(inputs, val_size=val_size)
        for (symbol, y), split in zip(members, splits, strict=True):
            origins = np.arange(cfg.input_size, split.n - cfg.h + 1)
            predicted = model.predict_windows(windows_at(y, origins, cfg.input_size))
            out.append(SeriesForecasts(symbol, y, origins, predicted, split.test_origins, cfg.h))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scope", choices=("symbol", "global"), default="symbol")
    parser.add_argument("--max-steps", type=int)
    args = parser.parse_args()
    from services.runtime.threads import limit_math_threads

    limit_math_threads(1)
    print(study(bundled_forecasts(args.scope, args.max_steps)))


if __name__ == "__main__":
    main()
