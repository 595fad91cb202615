"""Walk-forward evaluation on a held-out tail, split conformal intervals, and the metrics.

A series of n bars (bar index, no gaps) is split, oldest to newest, into::

    | train ........................ | calibration (C windows) | test (W windows) |
                                    ^ train_end

- NHITS trains on `y[:train_end]` (neuralforecast's validation loss is computed on the calibration
  segment, which it never trains on).
- Calibration: C forecast origins, one bar apart, whose h-step targets end just before the test
  segment (neuralforecast's validation segment: never trained on).
- Intervals (`expanding_quantiles`): at each evaluated origin t, per-step conformal quantiles of
  the errors, divided by each origin's `VolatilityScale` (last price x recent volatility), of every
  earlier origin whose h targets were all observed before t (at most `interval_windows` of the most
  recent): training-period, calibration and earlier test origins. No point's interval uses its own
  or any later bar. The older split conformal quantiles (the C calibration origins only) and the
  expanding ones with the short volatility window alone are scored beside them
  (`interval_methods`) for comparison; docs/models.md has the measurements.
- Test: W origins `step` bars apart (non-overlapping by default) ending at the last bar. NHITS,
  Naive and SeasonalNaive (statsforecast, full history) and the statsforecast AutoETS / AutoTheta
  (/ AutoARIMA) baselines (fitted per window on the last `baseline_input_size` bars) are scored on
  the same origins.
- Each baseline's difference from NHITS gets a Diebold-Mariano p-value (services.forecast.significance)
  and every model's directional accuracy a Pesaran-Timmermann p-value; intervals an interval score.
- The served model is exactly the evaluated one; its intervals use the expanding quantiles at the
  end of the series (every origin whose targets are known, at most `interval_windows`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.forecast.settings import BASELINES
from services.forecast.significance import diebold_mariano, interval_score, pesaran_timmermann

LEVELS: tuple[int, ...] = (80, 95)

PredictFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Split:
    """Bar indices of the walk-forward split. Origins are the index of the first forecast bar."""

    n: int
    h: int
    input_size: int
    train_end: int
    calibration_origins: np.ndarray  # (C,)
    test_origins: np.ndarray  # (W,)
    step: int

    @property
    def calibration_len(self) -> int:
        """Bars from train_end to the test segment (neuralforecast's val_size)."""
        return int(self.test_origins[0] - self.train_end)

    @property
    def test_len(self) -> int:
        return self.n - int(self.test_origins[0])


def make_split(
    n: int, h: int, input_size: int, *, windows: int, step: int, calibration: int, min_train: int
) -> Split:
    """Lay out train / calibration / test for a series of `n` bars.

    Shrinks the calibration and test windows (down to 20 and 2) when the series is short;
    ValueError when even that leaves fewer than `input_size + h + min_train` training bars.
    """
    step = step or h
    need_train = input_size + h + min_train
    while True:
        test_len = (windows - 1) * step + h
        cal_len = calibration + h - 1
        train_end = n - test_len - cal_len
        if train_end >= need_train:
            break
        if calibration > 20:
            calibration = max(20, calibration // 2)
        elif windows > 2:
            windows -= 1
        else:
            raise ValueError(
                f"series too short: {n} bars, need at least {need_train + cal_len + test_len} "
                f"(input_size={input_size}, h={h})"
            )
    test_origins = n - test_len + step * np.arange(windows)
    calibration_origins = train_end + np.arange(calibration)
    return Split(n, h, input_size, train_end, calibration_origins, test_origins, step)


def windows_at(y: np.ndarray, origins: np.ndarray, input_size: int) -> np.ndarray:
    """Input windows ending just before each origin: shape (len(origins), input_size)."""
    idx = origins[:, None] - input_size + np.arange(input_size)[None, :]
    return y[idx]


def targets_at(y: np.ndarray, origins: np.ndarray, h: int) -> np.ndarray:
    """The h bars from each origin: shape (len(origins), h)."""
    return y[origins[:, None] + np.arange(h)[None, :]]


VOL_LOOKBACK = 48  # bars of log returns behind the short volatility (2 days of H1, ~2 months of D1)
VOL_LONG_LOOKBACK = 960  # bars behind the long one (40 days of H1, ~4 years of D1)
VOL_SHORT_WEIGHT = 0.75  # share of the short window's variance in the blend


@dataclass(frozen=True, slots=True)
class VolatilityScale:
    """Price scale of a forecast's intervals: last price x a blend of a short and a long realised
    volatility, sqrt(w * var_short + (1 - w) * var_long) of the log returns ending at the origin's
    last observed bar (population variances; fewer returns when the series is shorter).

    Normalising conformal scores by it makes intervals widen in volatile periods and narrow in calm
    ones (locally adaptive split conformal). The long window pulls a short-window estimate back
    towards the longer-run level, as a GARCH variance forecast reverts over a 24-bar horizon;
    chosen by interval score on the bars before the test segment (docs/models.md, "Interval
    method"). `long_lookback` 0 is the short window alone (versions trained before the blend).
    """

    lookback: int = VOL_LOOKBACK
    long_lookback: int = VOL_LONG_LOOKBACK
    short_weight: float = VOL_SHORT_WEIGHT

    @property
    def history(self) -> int:
        """Closes a forecast needs to compute its scale with full windows."""
        return max(self.lookback, self.long_lookback) + 1

    def at(self, y: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """Scales (N,) of forecasts whose first forecast bar is `origins` (N,), from the positive
        prices `y` (only bars before each origin are read). y: (n,); each origin in [2, n]."""
        r = np.diff(np.log(y))
        c1 = np.concatenate(([0.0], np.cumsum(r)))
        c2 = np.concatenate(([0.0], np.cumsum(r * r)))
        stop = np.asarray(origins, dtype=np.int64) - 1  # returns r[start:stop] end at bar origin - 1

        def variance(lookback: int) -> np.ndarray:
            start = np.maximum(0, stop - lookback)
            n = np.maximum(1, stop - start)
            mean = (c1[stop] - c1[start]) / n
            return np.maximum((c2[stop] - c2[start]) / n - mean * mean, 0.0)

        var = variance(self.lookback)
        if self.long_lookback > 0 and self.short_weight < 1.0:
            var = self.short_weight * var + (1.0 - self.short_weight) * variance(self.long_lookback)
        floor = 1e-6
        return y[stop] * np.maximum(np.sqrt(var), floor)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "volatility_lookback": self.lookback,
            "volatility_long_lookback": self.long_lookback,
            "volatility_short_weight": self.short_weight,
        }

    @classmethod
    def from_metadata(cls, intervals: dict[str, Any]) -> VolatilityScale:
        """The scale a stored version was evaluated with; a version without the long-window keys
        was trained with the short window alone."""
        return cls(
            int(intervals.get("volatility_lookback", VOL_LOOKBACK)),
            int(intervals.get("volatility_long_lookback", 0)),
            float(intervals.get("volatility_short_weight", 1.0)),
        )


#: The served scale, and the one before it (the short window alone), scored beside it.
DEFAULT_SCALE = VolatilityScale()
SHORT_SCALE = VolatilityScale(VOL_LOOKBACK, 0, 1.0)


def conformal_quantiles(
    actual: np.ndarray, predicted: np.ndarray, scale: np.ndarray, levels: Sequence[int] = LEVELS
) -> dict[int, np.ndarray]:
    """Split conformal half-widths per horizon step, in units of `scale`.

    actual, predicted: (N, h); scale: (N,) each origin's `VolatilityScale.at`.
    Returns {level: (h,)}: the ceil((N+1)·level/100)-th smallest |error|/scale of each step, so that
    [ŷ - q·scale, ŷ + q·scale] covers a new exchangeable error with probability >= level%.
    Higher levels are never narrower (same scores, higher rank), so the intervals nest.
    """
    scores = np.sort(np.abs(actual - predicted) / scale[:, None], axis=0)
    n = scores.shape[0]
    out: dict[int, np.ndarray] = {}
    for level in levels:
        rank = min(n, math.ceil((n + 1) * level / 100)) - 1
        out[level] = scores[rank]
    return out


def expanding_quantiles(
    scores: np.ndarray, origins: np.ndarray, at: int, h: int, window: int, levels: Sequence[int] = LEVELS
) -> dict[int, np.ndarray]:
    """Conformal half-widths for a forecast from origin `at` (its first forecast bar), from the
    scores (N, h) of `origins` (N,, ascending): those whose last target `o + h - 1` lies before `at`,
    the `window` most recent of them. Same ranks as `conformal_quantiles`; ValueError when none."""
    stop = int(np.searchsorted(origins, at - h, side="right"))
    start = max(0, stop - window)
    if stop <= start:
        raise ValueError(f"no calibration origin before bar {at}")
    chosen = np.sort(scores[start:stop], axis=0)
    n = chosen.shape[0]
    return {level: chosen[min(n, math.ceil((n + 1) * level / 100)) - 1] for level in levels}


def interval_bounds(
    predicted: np.ndarray, scale: np.ndarray, quantiles: dict[int, np.ndarray]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Lower and upper bounds, each shaped like `predicted` (N, h), for every level; scale: (N,)."""
    out = {}
    for level, q in quantiles.items():
        half = q[None, : predicted.shape[1]] * scale[:, None]
        out[level] = (predicted - half, predicted + half)
    return out


def score(
    actual: np.ndarray,
    predicted: np.ndarray,
    last: np.ndarray,
    bounds: dict[int, tuple[np.ndarray, np.ndarray]],
    scale: float,
) -> dict[str, float | None]:
    """Metrics of one model over W windows. actual, predicted: (W, h); last: (W,).

    MASE divides by `scale`, the in-sample MAE of the one-step naive forecast on the training bars.
    Directional accuracy compares sign(ŷ - last) with sign(y - last) over the points where both
    move; None when the model never predicts a move (Naive).
    """
    err = predicted - actual
    mae = float(np.mean(np.abs(err)))
    out: dict[str, float | None] = {
        "mae": mae,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mase": mae / scale if scale > 0 else None,
    }
    pred_dir = np.sign(predicted - last[:, None])
    true_dir = np.sign(actual - last[:, None])
    moving = (pred_dir != 0) & (true_dir != 0)
    out["directional_accuracy"] = (
        float(np.mean(pred_dir[moving] == true_dir[moving])) if moving.any() else None
    )
    p_dir = pesaran_timmermann(pred_dir[moving], true_dir[moving])[1] if moving.any() else math.nan
    out["directional_p_value"] = None if math.isnan(p_dir) else p_dir
    for level, (lo, hi) in bounds.items():
        out[f"coverage_{level}"] = float(np.mean((actual >= lo) & (actual <= hi)))
        out[f"width_{level}"] = float(np.mean(hi - lo))
        out[f"interval_score_{level}"] = interval_score(actual, lo, hi, level)
    return out


#: statsforecast baselines that may be added to Naive and SeasonalNaive (KITRADING_FORECAST_BASELINES).
EXTRA_BASELINES: tuple[str, ...] = BASELINES

Forecasts = dict[str, tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]]]]


def _cross_validate(
    y: np.ndarray, split: Split, models: list[Any], names: Sequence[str], levels: Sequence[int], **kwargs: Any
) -> Forecasts:
    import pandas as pd
    from statsforecast import StatsForecast

    windows = len(split.test_origins)
    df = pd.DataFrame({"unique_id": "y", "ds": np.arange(split.n, dtype=np.int64), "y": y[: split.n]})
    sf = StatsForecast(models=models, freq=1, n_jobs=1)
    cv = sf.cross_validation(
        df=df, h=split.h, step_size=split.step, n_windows=windows, level=list(levels), **kwargs
    )
    cv = cv.sort_values(["cutoff", "ds"])
    cutoffs = np.sort(cv["cutoff"].unique())
    expected = split.test_origins - 1
    if not np.array_equal(cutoffs.astype(np.int64), expected.astype(np.int64)):
        raise RuntimeError(
            f"statsforecast cutoffs {cutoffs[:3]}... differ from the test origins {expected[:3]}..."
        )
    out = {}
    for name in names:
        point = cv[name].to_numpy().reshape(windows, split.h)
        bounds = {
            level: (
                cv[f"{name}-lo-{level}"].to_numpy().reshape(windows, split.h),
                cv[f"{name}-hi-{level}"].to_numpy().reshape(windows, split.h),
            )
            for level in levels
        }
        out[name] = (point, bounds)
    return out


def baseline_forecasts(
    y: np.ndarray,
    split: Split,
    season_length: int,
    levels: Sequence[int] = LEVELS,
    *,
    extra: Sequence[str] = (),
    extra_input_size: int = 500,
) -> Forecasts:
    """Naive and SeasonalNaive (statsforecast, full history) and the `extra` statsforecast models
    (names in EXTRA_BASELINES, refitted per window on its last `extra_input_size` bars, their
    season `season_length`) on the test origins of `split`.

    Returns {model: (point (W, h), {level: (lo (W, h), hi (W, h))})}, in origin order.
    """
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta, Naive, SeasonalNaive

    out = _cross_validate(
        y, split, [Naive(), SeasonalNaive(season_length=season_length)], ("Naive", "SeasonalNaive"), levels
    )
    unknown = set(extra) - set(EXTRA_BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; known: {EXTRA_BASELINES}")
    builders = {"AutoETS": AutoETS, "AutoTheta": AutoTheta, "AutoARIMA": AutoARIMA}
    names = [name for name in EXTRA_BASELINES if name in extra]
    if names:
        models = [builders[name](season_length=season_length) for name in names]
        out.update(_cross_validate(y, split, models, names, levels, input_size=extra_input_size))
    return out


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    """Metrics per model on the test windows, and the conformal quantiles to serve with."""

    metrics: dict[str, dict[str, float | None]]
    serving_quantiles: dict[int, np.ndarray]  # {level: (h,)}
    calibration_windows: int
    serving_windows: int
    season_length: int
    #: NHITS's test-window interval figures under each calibration ("expanding" is the one served).
    interval_methods: dict[str, dict[str, float]]
    baseline_seconds: float = 0.0
    #: NHITS's MAE of each test window, in origin order (for Diebold-Mariano against another NHITS).
    window_mae: tuple[float, ...] = ()
    #: The volatility scale the intervals were calibrated with (and must be served with).
    scale: VolatilityScale = DEFAULT_SCALE


def _interval_figures(
    actual: np.ndarray, bounds: dict[int, tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for level, (lo, hi) in bounds.items():
        out[f"coverage_{level}"] = float(np.mean((actual >= lo) & (actual <= hi)))
        out[f"width_{level}"] = float(np.mean(hi - lo))
        out[f"interval_score_{level}"] = interval_score(actual, lo, hi, level)
    return out


def _expanding_bounds(
    scores: np.ndarray,
    origins: np.ndarray,
    at: np.ndarray,
    predicted: np.ndarray,
    scale: np.ndarray,
    h: int,
    window: int,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Bounds of the forecasts `predicted` (W, h) from origins `at` (W,), each with its own
    expanding quantiles (only origins whose targets precede it); scale: (W,)."""
    per_origin = [expanding_quantiles(scores, origins, int(t), h, window) for t in at]
    out = {}
    for level in LEVELS:
        half = np.stack([q[level] for q in per_origin]) * scale[:, None]
        out[level] = (predicted - half, predicted + half)
    return out


def evaluate(
    y: np.ndarray,
    split: Split,
    predict: PredictFn,
    *,
    season_length: int,
    interval_windows: int = 5000,
    baselines: Sequence[str] = (),
    baseline_input_size: int = 500,
    scale: VolatilityScale = DEFAULT_SCALE,
) -> EvaluationResult:
    """Walk-forward evaluation of a fitted model against the baselines on the same windows.

    y: (n,) the full series; predict: windows (B, input_size) -> forecasts (B, h).
    `interval_windows`: the most recent fully observed origins each interval is calibrated on;
    `baselines`: statsforecast models beyond Naive and SeasonalNaive (EXTRA_BASELINES);
    `scale`: the intervals' volatility scale (served with the model).
    """
    import time

    h, size = split.h, split.input_size
    mase_scale = float(np.mean(np.abs(np.diff(y[: split.train_end]))))

    # One forward pass over every origin (step 1) an interval may be calibrated on, through the last.
    first = max(size, int(split.test_origins[0]) - h + 1 - interval_windows)
    first = min(first, int(split.calibration_origins[0]))
    origins = np.arange(first, split.n - h + 1)
    windows = windows_at(y, origins, size)
    predicted = predict(windows)
    actual = targets_at(y, origins, h)
    last = y[origins - 1]
    widths = scale.at(y, origins)
    scores = np.abs(actual - predicted) / widths[:, None]
    cal_rows = split.calibration_origins - first
    n_cal = len(cal_rows)
    cal_q = conformal_quantiles(actual[cal_rows], predicted[cal_rows], widths[cal_rows])
    serve_q = expanding_quantiles(scores, origins, split.n, h, interval_windows)
    serving_windows = min(interval_windows, int(np.searchsorted(origins, split.n - h, side="right")))
    # Selection signal that never looks at the test windows: NHITS vs Naive on calibration.
    cal_err = np.abs(actual[cal_rows] - predicted[cal_rows])
    naive_err = np.abs(actual[cal_rows] - last[cal_rows, None])
    validation_ratio = float(cal_err.mean() / naive_err.mean()) if naive_err.mean() > 0 else None

    test_rows = split.test_origins - first
    t_pred, t_act, t_last, t_scale = (
        predicted[test_rows],
        actual[test_rows],
        last[test_rows],
        widths[test_rows],
    )
    expanding = _expanding_bounds(scores, origins, split.test_origins, t_pred, t_scale, h, interval_windows)
    split_bounds = interval_bounds(t_pred, t_scale, cal_q)
    nhits = score(t_act, t_pred, t_last, expanding, mase_scale)
    nhits["validation_mae_vs_naive"] = validation_ratio
    metrics = {"NHITS": nhits}
    interval_methods = {
        "expanding": _interval_figures(t_act, expanding),
        "split_calibration": _interval_figures(t_act, split_bounds),
    }
    if scale != SHORT_SCALE:  # the scale before the blend, on the same forecasts and origins
        short = SHORT_SCALE.at(y, origins)
        short_scores = np.abs(actual - predicted) / short[:, None]
        interval_methods["expanding_short_volatility"] = _interval_figures(
            t_act,
            _expanding_bounds(
                short_scores, origins, split.test_origins, t_pred, short[test_rows], h, interval_windows
            ),
        )
    started = time.perf_counter()
    forecasts = baseline_forecasts(
        y, split, season_length, extra=baselines, extra_input_size=baseline_input_size
    )
    baseline_seconds = time.perf_counter() - started
    for name, (point, bounds) in forecasts.items():
        metrics[name] = score(t_act, point, t_last, bounds, mase_scale)
    naive_mae = metrics["Naive"]["mae"]
    for values in metrics.values():
        mae = values["mae"]
        values["mae_vs_naive"] = mae / naive_mae if mae is not None and naive_mae else None
    # Is NHITS's difference from each baseline more than noise? Diebold-Mariano on the test windows'
    # mean absolute errors (windows `step` apart: their losses overlap over ceil(h / step) windows).
    nhits_loss = np.abs(t_pred - t_act).mean(axis=1)
    overlap = max(1, math.ceil(h / split.step))
    for name, (point, _) in forecasts.items():
        stat, p = diebold_mariano(np.abs(point - t_act).mean(axis=1), nhits_loss, h=overlap)
        metrics[name]["dm_statistic_vs_nhits"] = None if math.isnan(stat) else stat
        metrics[name]["dm_p_value_vs_nhits"] = None if math.isnan(p) else p
    return EvaluationResult(
        metrics,
        serve_q,
        n_cal,
        serving_windows,
        season_length,
        interval_methods,
        baseline_seconds,
        tuple(float(x) for x in nhits_loss),
        scale,
    )


def compare_windows(
    window_mae: Sequence[float], other_mae: Sequence[float], h: int, step: int
) -> dict[str, float | None]:
    """Diebold-Mariano of another NHITS's per-window MAE (`other_mae`) against this one's on the
    same test windows: {"dm_statistic": positive when the other loses more, "dm_p_value"}."""
    overlap = max(1, math.ceil(h / step))
    stat, p = diebold_mariano(np.asarray(other_mae), np.asarray(window_mae), h=overlap)
    return {
        "dm_statistic": None if math.isnan(stat) else stat,
        "dm_p_value": None if math.isnan(p) else p,
    }
