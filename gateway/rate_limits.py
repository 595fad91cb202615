"""Rate limits at the gateway: Envoy's local rate limit filter, one token bucket per client.

A client is an API key (its verified id, `x-kitrading-key-id`) when keys are configured, else the
connection's address (`use_remote_address`: a client cannot pick another with X-Forwarded-For).
Two filters, both after RBAC and the transcoder, where every call (JSON/HTTP, SSE, gRPC, grpc-web)
has its gRPC path:

- `calls`: every call, `calls_per_second` refilled each second up to `burst` at once;
- `expensive`: the calls that start work (training, sync, sample imports, the analyst, document adds,
  test alerts, rollbacks: `EXPENSIVE_METHODS`), `expensive_per_minute` refilled evenly up to
  `expensive_burst` at once, on top of the first bucket.

A call over a limit is answered by Envoy without reaching the service: HTTP 429 with `Retry-After`
(seconds until the next token) and a google.rpc.Status body naming the limit, or gRPC
RESOURCE_EXHAUSTED with the same message (`envoy_config.rate_limit_mappers`). `/<prefix>/health` is
never limited (answered before these filters, so probes see a service's health whatever a client
does); the docs pages, OpenAPI documents and the dashboard's files count as calls.

Limits are on by default where the gateway can be reached by others (a listener beyond loopback, or
API keys configured); the embedded default on loopback without keys is one user on one machine and
runs unlimited. `KITRADING_GATEWAY_RATE_LIMITS=on|off|auto` says otherwise.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import betterproto2
from envoy_data_plane.envoy.config.core.v3 import (
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    RuntimeFractionalPercent,
)
from envoy_data_plane.envoy.config.route.v3 import (
    HeaderMatcher,
    RateLimit,
    RateLimitAction,
    RateLimitActionHeaderValueMatch,
    RateLimitActionRemoteAddress,
    RateLimitActionRequestHeaders,
)
from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import (
    LocalRateLimitDescriptor,
    RateLimitDescriptorEntry,
)
from envoy_data_plane.envoy.extensions.filters.http.local_ratelimit.v3 import LocalRateLimit
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.envoy.type.v3 import FractionalPercent, FractionalPercentDenominatorType, TokenBucket
from envoy_data_plane.google.protobuf import Any as AnyProto

from services.runtime.config import ChoiceVar, IntVar, Var, check_fields, read_fields

#: The calls that start work rather than read a result (`package.Service/Method`): the second,
#: stricter bucket. A test checks that each names an existing RPC.
EXPENSIVE_METHODS: frozenset[str] = frozenset(
    {
        "kitrading.data.v1.DataService/StartSync",
        "kitrading.data.v1.DataService/ImportSamples",
        "kitrading.forecast.v1.ForecastService/TrainAll",
        "kitrading.forecast.v1.ForecastService/TrainSymbol",
        "kitrading.forecast.v1.ForecastService/RollbackModelVersion",
        "kitrading.pattern.v1.PatternService/TrainPatternModel",
        "kitrading.pattern.v1.PatternService/RollbackPatternModel",
        "kitrading.regime.v1.RegimeService/TrainRegimeModels",
        "kitrading.regime.v1.RegimeService/RollbackRegimeModel",
        "kitrading.llm.v1.LlmService/Analyze",
        "kitrading.llm.v1.LlmService/AnalyzeStream",
        "kitrading.rag.v1.RagService/AddDocument",
        "kitrading.watchdog.v1.WatchdogService/SendTestAlert",
    }
)

MODES = ("auto", "on", "off")
MODE = "KITRADING_GATEWAY_RATE_LIMITS"
CALLS_PER_SECOND = "KITRADING_GATEWAY_RATE_LIMIT_PER_SECOND"
BURST = "KITRADING_GATEWAY_RATE_LIMIT_BURST"
EXPENSIVE_PER_MINUTE = "KITRADING_GATEWAY_EXPENSIVE_PER_MINUTE"
EXPENSIVE_BURST = "KITRADING_GATEWAY_EXPENSIVE_BURST"
CLIENTS = "KITRADING_GATEWAY_RATE_LIMIT_CLIENTS"

#: Attribute -> its variable and range (the shared settings machinery: errors name the variable).
FIELDS: dict[str, Var] = {
    "mode": ChoiceVar(MODE, MODES),
    "calls_per_second": IntVar(CALLS_PER_SECOND, 1, 1_000_000),
    "burst": IntVar(BURST, 1, 1_000_000),
    # Envoy refills a bucket at most every 50 ms
    "expensive_per_minute": IntVar(EXPENSIVE_PER_MINUTE, 1, 1200),
    "expensive_burst": IntVar(EXPENSIVE_BURST, 1, 1_000_000),
    "clients": IntVar(CLIENTS, 1, 1_000_000),
}

#: Names of the two filters in the chain (their stats: `http_local_rate_limit.<stat prefix>...`).
CALLS_FILTER = "kitrading.rate_limit.calls"
EXPENSIVE_FILTER = "kitrading.rate_limit.expensive"
#: Descriptor keys: the client (one of the two), and the expensive-call marker.
KEY_DESCRIPTOR, ADDRESS_DESCRIPTOR, EXPENSIVE_DESCRIPTOR = "key_id", "remote_address", "expensive"


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Per-client limits; `mode` auto: on beyond loopback or with API keys (`active`)."""

    mode: str = "auto"
    #: Every call: refilled by this many each second, at most `burst` at once.
    calls_per_second: int = 100
    burst: int = 200
    #: `EXPENSIVE_METHODS`: one token every 60/`expensive_per_minute` s, at most `expensive_burst`.
    expensive_per_minute: int = 20
    expensive_burst: int = 10
    #: Clients tracked at once per bucket (an LRU: the least recent beyond it starts afresh).
    clients: int = 10_000
    expensive_methods: frozenset[str] = field(default=EXPENSIVE_METHODS)

    def __post_init__(self) -> None:
        check_fields(self, FIELDS)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RateLimitSettings:
        """The variables of `FIELDS`; unset or empty ones keep the defaults."""
        source = os.environ if env is None else env
        defaults = cls()
        return replace(defaults, **read_fields(defaults, FIELDS, source))

    def active(self, *, exposed: bool, keys: bool) -> bool:
        """Whether the gateway limits: `on`, or `auto` and reachable by others (`exposed`) or keyed."""
        return self.mode == "on" or (self.mode == "auto" and (exposed or keys))

    @property
    def expensive_interval_s(self) -> float:
        return 60.0 / self.expensive_per_minute

    @property
    def calls_retry_after_s(self) -> int:
        return 1

    @property
    def expensive_retry_after_s(self) -> int:
        return max(1, math.ceil(self.expensive_interval_s))


def _client_action(keys: bool) -> RateLimitAction:
    if keys:  # set by jwt_authn from the verified key (RBAC let only such calls by)
        return RateLimitAction(
            request_headers=RateLimitActionRequestHeaders(
                header_name="x-kitrading-key-id", descriptor_key=KEY_DESCRIPTOR
            )
        )
    return RateLimitAction(remote_address=RateLimitActionRemoteAddress())


def _always() -> RuntimeFractionalPercent:
    return RuntimeFractionalPercent(
        default_value=FractionalPercent(numerator=100, denominator=FractionalPercentDenominatorType.HUNDRED),
        runtime_key="kitrading.rate_limit.enabled",
    )


def _bucket(max_tokens: int, tokens_per_fill: int, interval_s: float) -> TokenBucket:
    return TokenBucket(
        max_tokens=max_tokens,
        tokens_per_fill=tokens_per_fill,
        fill_interval=datetime.timedelta(milliseconds=round(interval_s * 1000)),
    )


def _filter(
    name: str,
    *,
    rate_limits: list[RateLimit],
    entries: list[RateLimitDescriptorEntry],
    bucket: TokenBucket,
    retry_after_s: int,
    clients: int,
) -> HttpFilter:
    config = LocalRateLimit(
        stat_prefix=name.rsplit(".", 1)[-1],
        filter_enabled=_always(),
        filter_enforced=_always(),
        rate_limits=rate_limits,
        descriptors=[LocalRateLimitDescriptor(entries=entries, token_bucket=bucket)],
        max_dynamic_descriptors=clients,
        # only the matched descriptor's bucket: there is no default one to drain
        always_consume_default_token_bucket=False,
        rate_limited_as_resource_exhausted=True,
        response_headers_to_add=[
            HeaderValueOption(
                header=HeaderValue(key="retry-after", value=str(retry_after_s)),
                append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
    )
    return HttpFilter(name=name, typed_config=_any(config))


def _any(message: betterproto2.Message) -> AnyProto:
    return AnyProto.pack(message)


def expensive_paths(methods: frozenset[str]) -> list[str]:
    """The gRPC paths of `methods`, sorted."""
    return [f"/{m}" for m in sorted(methods)]


def rate_limit_filters(settings: RateLimitSettings, *, keys: bool) -> list[HttpFilter]:
    """The two local rate limit filters, per API key (`keys`) or per client address."""
    client_key = KEY_DESCRIPTOR if keys else ADDRESS_DESCRIPTOR
    client = RateLimitDescriptorEntry(key=client_key)  # no value: one bucket per distinct client
    calls = _filter(
        CALLS_FILTER,
        rate_limits=[RateLimit(actions=[_client_action(keys)])],
        entries=[client],
        bucket=_bucket(settings.burst, settings.calls_per_second, 1.0),
        retry_after_s=settings.calls_retry_after_s,
        clients=settings.clients,
    )
    # one rate limit per expensive path (exact matches: Envoy caps a regex's size): the one that
    # matches gives the descriptor (expensive, client); the others make none
    marked = [
        RateLimit(
            actions=[
                RateLimitAction(
                    header_value_match=RateLimitActionHeaderValueMatch(
                        descriptor_key=EXPENSIVE_DESCRIPTOR,
                        descriptor_value="yes",
                        expect_match=True,
                        headers=[HeaderMatcher(name=":path", string_match=StringMatcher(exact=path))],
                    )
                ),
                _client_action(keys),
            ]
        )
        for path in expensive_paths(settings.expensive_methods)
    ]
    expensive = _filter(
        EXPENSIVE_FILTER,
        rate_limits=marked,
        entries=[RateLimitDescriptorEntry(key=EXPENSIVE_DESCRIPTOR, value="yes"), client],
        bucket=_bucket(settings.expensive_burst, 1, settings.expensive_interval_s),
        retry_after_s=settings.expensive_retry_after_s,
        clients=settings.clients,
    )
    return [calls, expensive]
