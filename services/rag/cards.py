"""The mesh's live model knowledge over gRPC, rendered as markdown documents (`Card`s).

`MeshCards.cards()` asks each service for what it publishes about its models:

| service | RPCs | documents (source) |
|---|---|---|
| forecast | `ListModelPerformance(active_only)` | one per series: `kitrading:model/forecast/EURUSD/H1` |
| regime | `GetRegimeStatus`, then `GetRegimeModel` per model | `kitrading:model/regime/EURUSD/H1` |
| pattern | `GetPatternModel`, `ListPatternTypes` | `kitrading:model/pattern/tcn`, `.../catalogue` |

A service that is down or failing is skipped: it is left out of `Cards.complete` (so the domain
keeps its previous documents) and reported once as a warning, then at debug level until it answers
again; where only some of its calls failed (one regime symbol retraining, the pattern model card)
the cards of the others still come back. A service with nothing trained yet answers with no cards.
Nothing past this module sees gRPC or protobuf.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from kitrading.client.errors import error_from_rpc
from kitrading.common.v1 import market_pb2
from kitrading.forecast.v1 import request_response_pb2 as fc_rr
from kitrading.forecast.v1 import resources_pb2 as fc_pb
from kitrading.forecast.v1 import service_pb2_grpc as fc_grpc
from kitrading.pattern.v1 import request_response_pb2 as pt_rr
from kitrading.pattern.v1 import resources_pb2 as pt_pb
from kitrading.pattern.v1 import service_pb2_grpc as pt_grpc
from kitrading.regime.v1 import request_response_pb2 as rg_rr
from kitrading.regime.v1 import resources_pb2 as rg_pb
from kitrading.regime.v1 import service_pb2_grpc as rg_grpc
from services.rag.models import Card, Cards
from services.rag.service import MODEL_SOURCE
from services.runtime.channels import mesh_channel
from services.runtime.deadline import remaining

log = logging.getLogger(__name__)

#: The services whose models the knowledge base describes.
CARD_SERVICES = ("forecast", "regime", "pattern")
PAGE = 1000


class _Partial(Exception):
    """Some of a service's calls failed: the cards of those that answered, and the first failure."""

    def __init__(self, cards: list[Card], error: grpc.aio.AioRpcError) -> None:
        super().__init__(str(error))
        self.cards = cards
        self.error = error


class MeshCards:
    """The model cards of the forecast, regime and pattern services at `targets` (service -> host:port)."""

    def __init__(self, targets: dict[str, str], *, timeout_s: float = 10.0) -> None:
        self.targets = {s: t for s, t in targets.items() if s in CARD_SERVICES and t}
        self.timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._down: set[str] = set()

    async def start(self) -> None:
        for service, target in self.targets.items():
            self._channels[service] = mesh_channel(target)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    async def cards(self) -> Cards:
        fetchers: dict[str, Callable[[grpc.aio.Channel], Any]] = {
            "forecast": self._forecast,
            "regime": self._regime,
            "pattern": self._pattern,
        }
        cards: list[Card] = []
        complete: set[str] = set()
        for service, channel in self._channels.items():
            try:
                found: list[Card] = await fetchers[service](channel)
            except grpc.aio.AioRpcError as exc:
                self._failed(service, exc)
                continue
            except _Partial as partial:  # what answered is ingested; nothing of the service is deleted
                cards.extend(partial.cards)
                self._failed(service, partial.error)
                continue
            if service in self._down:
                self._down.discard(service)
                log.info("model cards: the %s service answers again", service)
            cards.extend(found)
            complete.add(service)
        return Cards(tuple(cards), frozenset(complete))

    def _failed(self, service: str, exc: grpc.aio.AioRpcError) -> None:
        error = error_from_rpc(exc)
        level = logging.DEBUG if service in self._down else logging.WARNING
        self._down.add(service)
        log.log(
            level,
            "model cards: the %s service at %s is skipped (%s %s); retried on the next refresh",
            service,
            self.targets[service],
            error.code.name,
            error.message,
        )

    def _timeout(self) -> float:
        return remaining(self.timeout_s)

    async def _forecast(self, channel: grpc.aio.Channel) -> list[Card]:
        stub = fc_grpc.ForecastServiceStub(channel)
        performances: list[fc_pb.ModelPerformance] = []
        token = ""
        while True:
            reply = await stub.ListModelPerformance(
                fc_rr.ListModelPerformanceRequest(page_size=PAGE, page_token=token, active_only=True),
                timeout=self._timeout(),
            )
            performances.extend(reply.performances)
            token = reply.next_page_token
            if not token:
                break
        latest: dict[tuple[str, int], fc_pb.ModelPerformance] = {}
        for p in performances:  # one card per series: its active version (the newest if several)
            key = (p.symbol, p.timeframe)
            if key not in latest or p.model_version > latest[key].model_version:
                latest[key] = p
        return [forecast_card(p) for _, p in sorted(latest.items())]

    async def _regime(self, channel: grpc.aio.Channel) -> list[Card]:
        stub = rg_grpc.RegimeServiceStub(channel)
        status = await stub.GetRegimeStatus(rg_rr.GetRegimeStatusRequest(), timeout=self._timeout())
        cards: list[Card] = []
        failed: grpc.aio.AioRpcError | None = None
        for summary in sorted(status.models, key=lambda m: (m.symbol, m.timeframe)):
            try:
                reply = await stub.GetRegimeModel(
                    rg_rr.GetRegimeModelRequest(symbol=summary.symbol, timeframe=summary.timeframe),
                    timeout=self._timeout(),
                )
            except grpc.aio.AioRpcError as exc:  # this symbol only (retraining, just removed)
                failed = failed or exc
                continue
            cards.append(regime_card(reply.model, reply.scorer if reply.HasField("scorer") else None))
        if failed is not None:
            raise _Partial(cards, failed)
        return cards

    async def _pattern(self, channel: grpc.aio.Channel) -> list[Card]:
        stub = pt_grpc.PatternServiceStub(channel)
        types: list[pt_pb.PatternType] = []
        token = ""
        while True:
            page = await stub.ListPatternTypes(
                pt_rr.ListPatternTypesRequest(page_size=PAGE, page_token=token), timeout=self._timeout()
            )
            types.extend(page.pattern_types)
            token = page.next_page_token
            if not token:
                break
        cards = [catalogue_card(types)] if types else []
        try:
            model = await stub.GetPatternModel(pt_rr.GetPatternModelRequest(), timeout=self._timeout())
        except grpc.aio.AioRpcError as exc:
            raise _Partial(cards, exc) from None
        if model.HasField("model"):
            cards.append(pattern_card(model.model))
        return cards


# -- rendering: messages -> markdown ----------------------------------------------------------------


def label(enum: EnumDescriptor, value: int) -> str:
    """`FORECAST_METHOD_AUTO_ETS` (by number) -> `AUTO_ETS`; unset -> ""."""
    item = enum.values_by_number.get(value) if value else None
    if item is None:
        return ""
    prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return item.name.removeprefix(prefix)


def timeframe(value: int) -> str:
    return label(market_pb2.Timeframe.DESCRIPTOR, value)


def when(ts: Timestamp) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


def day(ts: Timestamp) -> str:
    t = when(ts)
    return t.strftime("%Y-%m-%d %H:%M UTC") if t is not None else "unknown"


def num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def forecast_card(p: fc_pb.ModelPerformance) -> Card:
    tf = timeframe(p.timeframe)
    title = f"Forecast model card: {p.symbol} {tf} ({p.model_version})"
    rows = []
    for m in p.metrics:
        coverage = ", ".join(f"{c.level}%: {c.coverage:.2f}" for c in m.interval_coverage) or "-"
        dm = num(m.dm_p_value_vs_nhits, 3) if m.HasField("dm_p_value_vs_nhits") else "-"
        rows.append(
            [
                label(fc_pb.ForecastMethod.DESCRIPTOR, m.method),
                num(m.mae),
                num(m.rmse),
                num(m.mase, 3),
                f"{m.directional_accuracy:.2f}",
                coverage,
                dm,
            ]
        )
    nhits = next((m for m in p.metrics if m.method == fc_pb.FORECAST_METHOD_NHITS), None)
    verdict = ""
    if nhits is not None:
        beaten = [
            label(fc_pb.ForecastMethod.DESCRIPTOR, m.method)
            for m in p.metrics
            if m.method != fc_pb.FORECAST_METHOD_NHITS
            and m.mae > nhits.mae
            and m.HasField("dm_p_value_vs_nhits")
            and m.dm_p_value_vs_nhits < 0.05
        ]
        verdict = (
            f"NHITS MASE {num(nhits.mase, 3)} ({'beats' if nhits.mase < 1 else 'does not beat'} the naive "
            f"forecast in sample scale); significantly better (DM p < 0.05) than: "
            f"{', '.join(beaten) or 'none of the baselines'}."
        )
    lines = [
        f"# {title}",
        "",
        f"The active NHITS forecast model of {p.symbol} on {tf} bars is version {p.model_version}, "
        f"evaluated {day(p.evaluate_time)} on a held-out walk-forward test window from "
        f"{day(p.test_start_time)} to {day(p.test_end_time)}: {p.samples} forecast points, horizon "
        f"{p.horizon} bars, against the baselines on the same windows.",
        "",
        *table(
            ["method", "MAE", "RMSE", "MASE", "direction", "interval coverage", "DM p vs NHITS"],
            rows,
        ),
        "",
        "MASE below 1 beats the naive forecast; the Diebold-Mariano p-value says whether a baseline's "
        "errors differ from NHITS's by more than noise.",
    ]
    if verdict:
        lines += ["", verdict]
    return Card(
        source=f"{MODEL_SOURCE}forecast/{p.symbol}/{tf}",
        title=title,
        text="\n".join(lines) + "\n",
        symbol=p.symbol,
        publish_time=when(p.evaluate_time),
    )


def regime_card(m: rg_pb.RegimeModel, scorer: rg_pb.ScorerModel | None) -> Card:
    tf = timeframe(m.timeframe)
    title = f"Regime model card: {m.symbol} {tf} ({m.model_version})"
    regime = rg_pb.Regime.DESCRIPTOR
    lines = [
        f"# {title}",
        "",
        f"The market-regime model of {m.symbol} on {tf} bars is a Gaussian hidden Markov model, version "
        f"{m.model_version}, trained {day(m.train_time)} on {m.training_bars} bars from "
        f"{day(m.data_start_time)} to {day(m.data_end_time)}: {m.n_states} hidden states "
        f"(chosen by BIC), log likelihood {num(m.log_likelihood, 6)}, EM "
        f"{'converged' if m.converged else 'did not converge'} after {m.iterations} iterations.",
        "",
        *table(
            ["state", "regime", "mean log return per bar", "volatility", "expected stay (bars)"],
            [
                [
                    str(s.index),
                    label(regime, s.regime),
                    num(s.mean_return, 3),
                    num(s.volatility, 3),
                    f"{s.expected_duration_bars:.1f}",
                ]
                for s in m.states
            ],
        ),
    ]
    if m.bic:
        lines += ["", "BIC by state count: " + ", ".join(f"{b.n_states}: {b.bic:.1f}" for b in m.bic) + "."]
    if scorer is not None:
        e = scorer.evaluation
        c = e.calibrated
        lines += [
            "",
            f"## Signal scorer {scorer.model_version}",
            "",
            f"A LightGBM classifier trained on {scorer.training_samples} samples scores buy and sell "
            f"signals (horizon {scorer.horizon} bars, round-trip cost {num(scorer.cost, 3)}). Walk-forward, "
            f"out of fold: AUC {num(c.auc, 3)}, Brier skill {num(c.brier_skill, 3)}, log-loss skill "
            f"{num(c.log_loss_skill, 3)} against {e.base_predictor or 'the base rate'} "
            f"(positive rate {num(c.positive_rate, 3)}, {c.samples} samples). "
            f"Edge: {'yes' if e.edge else 'no'}. {e.verdict}",
        ]
        if e.backtest:
            lines += [
                "",
                *table(
                    ["strategy", "trades", "hit rate", "mean return", "Sharpe (annualised)", "max drawdown"],
                    [
                        [
                            b.strategy,
                            str(b.trades),
                            num(b.hit_rate, 2),
                            num(b.mean_return, 3),
                            num(b.sharpe_annualised, 3),
                            num(b.max_drawdown, 3),
                        ]
                        for b in e.backtest
                    ],
                ),
            ]
    return Card(
        source=f"{MODEL_SOURCE}regime/{m.symbol}/{tf}",
        title=title,
        text="\n".join(lines) + "\n",
        symbol=m.symbol,
        publish_time=when(m.train_time),
    )


def catalogue_card(types: Sequence[pt_pb.PatternType]) -> Card:
    title = "Pattern catalogue: the chart patterns the pattern service detects"
    direction = pt_pb.PatternDirection.DESCRIPTOR
    lines = [f"# {title}", ""]
    lines += [
        f"The rule-based detector and the TCN know {len(types)} pattern types "
        "(the slug, its usual direction and the fewest bars it spans):",
        "",
    ]
    for t in types:
        lines += [
            f"## {t.display_name or t.pattern_type} (`{t.pattern_type}`)",
            "",
            f"Direction: {label(direction, t.direction).lower() or 'unspecified'}; "
            f"at least {t.min_bars} bars.",
            "",
            t.description,
            "",
        ]
    return Card(source=f"{MODEL_SOURCE}pattern/catalogue", title=title, text="\n".join(lines).rstrip() + "\n")


def pattern_card(m: pt_pb.PatternModel) -> Card:
    title = f"Pattern model card: TCN {m.version}"
    macro = m.macro
    lines = [
        f"# {title}",
        "",
        f"The pattern service's temporal convolutional network, version {m.version}, trained "
        f"{day(m.create_time)} ({m.trigger or 'manual'}, on {m.device or 'cpu'}, {m.steps} steps, "
        f"{m.training_seconds:.0f} s): windows of {m.window_bars} bars, {m.levels} levels of {m.channels} "
        f"channels, kernel {m.kernel_size} (receptive field {m.receptive_field_bars} bars), embargo "
        f"{m.embargo_bars} bars.",
        "",
        f"Labels: {m.label_definition}",
        "",
        f"Split: {m.split_definition}",
        "",
        f"Held-out macro averages: precision {num(macro.precision, 3)}, recall {num(macro.recall, 3)}, "
        f"F1 {num(macro.f1, 3)}, PR-AUC {num(macro.pr_auc, 3)}.",
        "",
        *table(
            ["pattern", "support", "predicted", "precision", "recall", "F1", "PR-AUC", "threshold"],
            [
                [
                    c.pattern_type,
                    str(c.support),
                    str(c.predicted),
                    num(c.precision, 3),
                    num(c.recall, 3),
                    num(c.f1, 3),
                    num(c.pr_auc, 3),
                    num(c.threshold, 3),
                ]
                for c in m.classes
            ],
        ),
    ]
    if m.series:
        lines += [
            "",
            "Trained and tested on: "
            + ", ".join(
                f"{s.symbol} {timeframe(s.timeframe)} ({s.bars} bars, test from {day(s.test_start_time)})"
                for s in m.series
            )
            + ".",
        ]
    return Card(
        source=f"{MODEL_SOURCE}pattern/tcn",
        title=title,
        text="\n".join(lines) + "\n",
        publish_time=when(m.create_time),
    )
