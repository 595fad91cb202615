"""The pattern TCN: dilated causal residual convolutions over normalised OHLCV windows, multi-label
over the catalogue, trained on the rule-based detector's labels.

Inputs. A window is the `window` bars ending at bar t. Each bar gives five channels, normalised
inside the window only (no statistic from outside it, so no later bar): open, high, low and close as
(price - close[t]) / R, with R the window's mean bar range (high - low; ATR-like, so a pattern's
geometry reads the same on every instrument and timeframe), clipped to +-50; and log(1 + volume)
standardised over the window (0 when it is constant or missing).

Labels. Window t is labelled with every type the detector confirms at a bar e with
t - tolerance <= e <= t (`detector.detect` is causal: a detection confirmed at e uses no bar after e,
so a label never needs a bar after the window). `label_matrix` builds them.

Split (per series, `split`). The last `holdout` share of the bars is the test period (the same bars
the rules' follow-through is measured on, services.pattern.followthrough). Windows ending in it are
test windows. Training and validation windows end at least `embargo` (= the window length) bars
before the first test bar, so no training window shares a bar with any test window; the newest
`validation_share` of that span is the validation set (again `embargo` bars after the last training
window), used for the per-type decision thresholds only.

Model. `levels` residual blocks with dilation 2**i, each two causal convolutions (kernel `kernel`)
with ReLU and dropout, a 1x1 convolution on the skip path where the width changes; the last time
step's features go through one linear layer to a logit per type. Receptive field
1 + 2 (kernel - 1)(2**levels - 1) bars. Loss: BCEWithLogits with pos_weight = negatives / positives
per type on the training windows (capped at `max_pos_weight`), the class imbalance handled there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from services.pattern.catalogue import CATALOGUE
from services.pattern.detector import BREAKOUT_LOOKBACK, RULES, Detection, KeyPoint
from services.pattern.pivots import Pivot, zigzag

if TYPE_CHECKING:
    import torch
    from torch import nn

SLUGS: tuple[str, ...] = tuple(spec.slug for spec in CATALOGUE)
CHANNELS = 5
_CLIP = 50.0


@dataclass(frozen=True, slots=True)
class TCNConfig:
    """Architecture and training of one TCN (stored with each version as `config.json`)."""

    window: int = 128
    tolerance: int = 2
    channels: int = 32
    levels: int = 5
    kernel: int = 3
    dropout: float = 0.1
    max_steps: int = 300
    batch_size: int = 128
    learning_rate: float = 3e-3
    holdout: float = 0.3
    validation_share: float = 0.15
    max_pos_weight: float = 200.0
    seed: int = 0
    slugs: tuple[str, ...] = SLUGS

    @property
    def embargo(self) -> int:
        return self.window

    @property
    def receptive_field(self) -> int:
        return 1 + 2 * (self.kernel - 1) * (2**self.levels - 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["slugs"] = list(self.slugs)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TCNConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "slugs" in known:
            known["slugs"] = tuple(known["slugs"])
        return cls(**known)


# ---- inputs and labels ----------------------------------------------------------------------------


def bar_features(frame: pd.DataFrame) -> np.ndarray:
    """(n, 5) raw per-bar values: open, high, low, close, log(1 + volume)."""
    prices = frame[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    volume = frame["volume"].to_numpy(dtype=np.float64) if "volume" in frame else np.zeros(len(frame))
    volume = np.log1p(np.clip(np.nan_to_num(volume, nan=0.0), 0.0, None))
    return np.column_stack([prices, volume])


def windows(raw: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """(len(ends), 5, window) float32 inputs of the windows ending at `ends` (see the module docstring)."""
    ends = np.asarray(ends, dtype=np.int64)
    if len(ends) == 0:
        return np.zeros((0, CHANNELS, window), dtype=np.float32)
    if ends.min() < window - 1 or ends.max() >= len(raw):
        raise ValueError(f"window ends must lie in [{window - 1}, {len(raw) - 1}]")
    view = np.lib.stride_tricks.sliding_window_view(raw, window, axis=0)  # (n - w + 1, 5, w)
    w = view[ends - window + 1].astype(np.float64)
    last_close = w[:, 3, -1][:, None]
    scale = (w[:, 1, :] - w[:, 2, :]).mean(axis=1)[:, None]
    floor = np.abs(last_close) * 1e-6 + 1e-12
    scale = np.where(scale > floor, scale, floor)
    prices = np.clip((w[:, :4, :] - last_close[:, :, None]) / scale[:, :, None], -_CLIP, _CLIP)
    vol = w[:, 4, :]
    std = vol.std(axis=1, keepdims=True)
    vol = np.where(std > 1e-9, (vol - vol.mean(axis=1, keepdims=True)) / np.where(std > 1e-9, std, 1.0), 0.0)
    return np.concatenate([prices, vol[:, None, :]], axis=1).astype(np.float32)


def label_matrix(n: int, detections: Sequence[Detection], tolerance: int, slugs: Sequence[str]) -> np.ndarray:
    """(n, types) uint8: row t is 1 for every type confirmed at a bar in [t - tolerance, t]."""
    index = {s: k for k, s in enumerate(slugs)}
    y = np.zeros((n, len(slugs)), dtype=np.uint8)
    for d in detections:
        k = index.get(d.slug)
        if k is not None and 0 <= d.end < n:
            y[d.end : d.end + tolerance + 1, k] = 1
    return y


@dataclass(frozen=True, slots=True)
class Split:
    """Window ends (bar indices) of one series: training, validation, test; `test_start` is the
    first test bar (= followthrough's held-out start)."""

    n: int
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    test_start: int


def split(n: int, config: TCNConfig) -> Split:
    """Time-based split of a series of `n` bars (see the module docstring)."""
    w, gap = config.window, config.embargo
    test_start = int(n * (1 - config.holdout))
    first = w - 1
    test = np.arange(max(test_start, first), n, dtype=np.int64)
    last_fit = test_start - 1 - gap  # the newest bar a training/validation window may end at
    if last_fit < first:
        empty = np.zeros(0, dtype=np.int64)
        return Split(n, empty, empty, test, test_start)
    span = last_fit - first + 1
    val_start = first + int(span * (1 - config.validation_share))
    train = np.arange(first, max(first, val_start - gap), dtype=np.int64)
    validation = np.arange(val_start, last_fit + 1, dtype=np.int64)
    return Split(n, train, validation, test, test_start)


# ---- the network ----------------------------------------------------------------------------------


def build_model(config: TCNConfig) -> nn.Module:
    import torch
    from torch import nn

    class CausalConv(nn.Module):
        def __init__(self, cin: int, cout: int, kernel: int, dilation: int) -> None:
            super().__init__()
            self.pad = (kernel - 1) * dilation
            self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(nn.functional.pad(x, (self.pad, 0)))

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, kernel: int, dilation: int, dropout: float) -> None:
            super().__init__()
            self.net = nn.Sequential(
                CausalConv(cin, cout, kernel, dilation),
                nn.ReLU(),
                nn.Dropout(dropout),
                CausalConv(cout, cout, kernel, dilation),
                nn.ReLU(),
                nn.Dropout(dropout),
            )
            self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.net(x) + self.skip(x))

    class TCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = config.channels
            self.blocks = nn.Sequential(
                *(
                    Block(CHANNELS if i == 0 else c, c, config.kernel, 2**i, config.dropout)
                    for i in range(config.levels)
                )
            )
            self.head = nn.Linear(c, len(config.slugs))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.blocks(x)[:, :, -1])

    torch.manual_seed(config.seed)
    return TCN()


def predict(model: nn.Module, inputs: np.ndarray, *, device: str = "cpu", batch: int = 1024) -> np.ndarray:
    """(len(inputs), types) probabilities."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            x = torch.from_numpy(inputs[i : i + batch]).to(device)
            out.append(torch.sigmoid(model(x)).float().cpu().numpy())
    if not out:
        head: Any = cast(Any, model).head
        return np.zeros((0, int(head.out_features)), dtype=np.float32)
    return np.concatenate(out)


# ---- training -------------------------------------------------------------------------------------


@dataclass
class Series:
    """One symbol's candles, its detector labels and split (built by `prepare_series`)."""

    symbol: str
    timeframe: str
    frame: pd.DataFrame
    detections: list[Detection]
    raw: np.ndarray
    labels: np.ndarray
    split: Split


def prepare_series(
    symbol: str, timeframe: str, frame: pd.DataFrame, config: TCNConfig, detections: list[Detection]
) -> Series:
    raw = bar_features(frame)
    labels = label_matrix(len(frame), detections, config.tolerance, config.slugs)
    return Series(symbol, timeframe, frame, detections, raw, labels, split(len(frame), config))


def _stack(series: Sequence[Series], part: str, window: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for s in series:
        ends = getattr(s.split, part)
        xs.append(windows(s.raw, ends, window))
        ys.append(s.labels[ends])
    if not xs:
        return np.zeros((0, CHANNELS, window), np.float32), np.zeros((0, 0), np.uint8)
    return np.concatenate(xs), np.concatenate(ys)


StepHook = Callable[[int, int, float], None]
ValidationHook = Callable[[int, int, float], None]


@dataclass
class Trained:
    model: Any
    config: TCNConfig
    pos_weight: list[float]
    train_positives: list[int]
    steps: int
    final_loss: float


def _one_cycle(optimiser: Any, max_lr: float, total_steps: int) -> Any:
    """OneCycleLR with a 10 % warm-up, at least 1.5 steps long: OneCycleLR divides by the warm-up's
    length in steps minus one, so 10 % of a 10-step run crashed it; a 1-step run keeps a constant rate."""
    import torch

    if total_steps < 2:
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=max_lr, total_steps=total_steps, pct_start=max(0.1, 1.5 / total_steps)
    )


def fit(
    series: Sequence[Series],
    config: TCNConfig,
    *,
    device: str = "cpu",
    on_step: StepHook | None = None,
    on_validation: ValidationHook | None = None,
    validations: int = 5,
) -> Trained:
    """Train on every series' training windows; validation loss `validations` times."""
    import torch

    x_train, y_train = _stack(series, "train", config.window)
    x_val, y_val = _stack(series, "validation", config.window)
    if len(x_train) < config.batch_size // 4 or len(x_train) == 0:
        raise ValueError(
            f"{len(x_train)} training windows of {config.window} bars: too few (more candles, a shorter "
            "window or a smaller holdout)"
        )
    positives = y_train.sum(axis=0).astype(np.int64)
    negatives = len(y_train) - positives
    weight = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    weight = np.clip(weight, 1.0, config.max_pos_weight)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(config).to(device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight, dtype=torch.float32, device=device))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    schedule = _one_cycle(optimiser, config.learning_rate, config.max_steps)
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train.astype(np.float32))
    every = max(1, config.max_steps // max(1, validations))
    loss_value = math.nan
    for step in range(1, config.max_steps + 1):
        model.train()
        idx = torch.from_numpy(rng.integers(0, len(xt), size=min(config.batch_size, len(xt))))
        xb, yb = xt[idx].to(device), yt[idx].to(device)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, config.max_steps, loss_value)
        if on_validation is not None and len(x_val) and (step % every == 0 or step == config.max_steps):
            p = predict(model, x_val, device=device)
            with torch.no_grad():
                logits = torch.logit(torch.from_numpy(p).clamp(1e-6, 1 - 1e-6))
                val = float(loss_fn.cpu()(logits, torch.from_numpy(y_val.astype(np.float32))))
                loss_fn.to(device)
            on_validation(step, config.max_steps, val)
    model.eval()
    return Trained(model, config, weight.tolist(), positives.tolist(), config.max_steps, loss_value)


# ---- evaluation -----------------------------------------------------------------------------------


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, as sklearn's average_precision); NaN
    without a positive."""
    positives = int(y.sum())
    if positives == 0:
        return math.nan
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    tp = np.cumsum(ys)
    # One point per distinct score (ties count together).
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tp = tp[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability cut that maximises F1 on (y, p); 0.5 without a positive."""
    if int(y.sum()) == 0 or len(p) == 0:
        return 0.5
    candidates = np.unique(np.quantile(p, np.linspace(0.5, 0.9995, 200)))
    best, best_f1 = 0.5, -1.0
    for c in candidates:
        pred = p >= c
        tp = float((pred & (y == 1)).sum())
        f1 = 2 * tp / max(1.0, float(pred.sum()) + float(y.sum()))
        if f1 > best_f1:
            best, best_f1 = float(c), f1
    return best


def class_metrics(y: np.ndarray, p: np.ndarray, threshold: float, bins: int = 10) -> dict[str, Any]:
    """support, predicted, precision, recall, F1, PR-AUC, Brier score and expected calibration error."""
    pred = p >= threshold
    support, predicted = int(y.sum()), int(pred.sum())
    tp = int((pred & (y == 1)).sum())
    precision = tp / predicted if predicted else math.nan
    recall = tp / support if support else math.nan
    f1 = (
        2 * precision * recall / (precision + recall)
        if support and predicted and (precision + recall) > 0
        else (0.0 if support else math.nan)
    )
    ece = 0.0
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(float(p[mask].mean()) - float(y[mask].mean()))
    return {
        "support": support,
        "predicted": predicted,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pr_auc": average_precision(y, p),
        "threshold": float(threshold),
        "brier": float(np.mean((p - y) ** 2)) if len(p) else math.nan,
        "calibration_error": float(ece) if len(p) else math.nan,
    }


def macro(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean of precision/recall/F1/PR-AUC over the types with test support (NaN skipped)."""

    def mean(name: str) -> float:
        values = [r[name] for r in rows if r["support"] and not math.isnan(r[name])]
        return float(np.mean(values)) if values else math.nan

    return {
        "support": int(sum(r["support"] for r in rows)),
        "predicted": int(sum(r["predicted"] for r in rows)),
        **{k: mean(k) for k in ("precision", "recall", "f1", "pr_auc", "brier", "calibration_error")},
        "types_with_support": sum(1 for r in rows if r["support"]),
    }


def events(
    probs: np.ndarray, ends: np.ndarray, thresholds: Sequence[float], slugs: Sequence[str]
) -> list[tuple[str, int, float]]:
    """(slug, bar, probability) where a type's probability crosses its threshold: the first bar of
    each run at or above it (a run continuing from before `ends` starts no event)."""
    out = []
    for k, slug in enumerate(slugs):
        above = probs[:, k] >= thresholds[k]
        starts = np.flatnonzero(above & ~np.r_[False, above[:-1]])
        out += [(slug, int(ends[i]), float(probs[i, k])) for i in starts]
    return sorted(out, key=lambda e: (e[1], e[0]))


def key_points(
    frame: pd.DataFrame, slug: str, end: int, pivots: Sequence[Pivot] | None = None
) -> tuple[int, tuple[KeyPoint, ...]]:
    """(start, points) for a TCN event: the zig-zag pivots confirmed by `end` that the rule of its
    type reads (the last 3, 4 or 5), or for a breakout the prior 20-bar extreme and the close. The
    network does not locate them: they show the swing structure it read, not a geometric fit."""
    high = frame["high"].to_numpy(dtype=np.float64)[: end + 1]
    low = frame["low"].to_numpy(dtype=np.float64)[: end + 1]
    close = frame["close"].to_numpy(dtype=np.float64)[: end + 1]
    if slug in ("breakout_up", "breakout_down"):
        w = BREAKOUT_LOOKBACK
        lo = max(0, end - w)
        prior = high[lo:end] if slug == "breakout_up" else low[lo:end]
        if not len(prior):
            prior = close[end : end + 1]
        level = float(prior.max() if slug == "breakout_up" else prior.min())
        return lo, (KeyPoint(max(0, end - 1), level, "level"), KeyPoint(end, float(close[end]), "close"))
    need = RULES[slug][0] if slug in RULES else 4
    if pivots is None:  # the zig-zag is causal: pivots of the whole frame confirmed by `end` are these
        pivots = zigzag(high, low, close)
    read = [p for p in pivots if p.confirmed <= end][-need:]
    if not read:
        return end, (KeyPoint(end, float(close[end]), "close"),)
    points = tuple(KeyPoint(p.index, p.price, "high" if p.kind == "H" else "low") for p in read)
    return points[0].index, points


def state_dict_cpu(model: nn.Module) -> dict[str, Any]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_model(config: TCNConfig, path: str, device: str = "cpu") -> nn.Module:
    import torch

    model = build_model(config)
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    model.to(device)
    model.eval()
    return model
