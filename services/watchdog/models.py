"""Plain value types of the watchdog (target states, status events, alerts, pages) and the `Probe`
interface every check implements (`probes.py` holds the implementations; this module imports no gRPC).

Everything here is immutable and free of I/O, so the servicer can map it to protobuf field by field.
Timestamps are timezone-aware UTC `datetime`s; latencies are milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable


def utcnow() -> datetime:
    return datetime.now(UTC)


class HealthStatus(StrEnum):
    """Health of one target, as the last check saw it."""

    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    #: Answered, but not with a known state (health service does not know the name, not checked yet).
    UNKNOWN = "UNKNOWN"
    #: No answer: connection refused, timeout, DNS failure.
    UNREACHABLE = "UNREACHABLE"
    #: The check does not apply on this machine (GPU memory without a GPU); never alerts.
    NOT_APPLICABLE = "NOT_APPLICABLE"

    @property
    def is_bad(self) -> bool:
        return self in _BAD


_BAD = frozenset({HealthStatus.NOT_SERVING, HealthStatus.UNKNOWN, HealthStatus.UNREACHABLE})


class TargetKind(StrEnum):
    """What a target is; the order is the order of the status snapshot."""

    #: A mesh gRPC service (standard health check).
    SERVICE = "SERVICE"
    #: The gateway (HTTP GET on its health URL).
    GATEWAY = "GATEWAY"
    #: PostgreSQL / TimescaleDB (SELECT 1).
    DATABASE = "DATABASE"
    #: Free space under KITRADING_HOME.
    DISK = "DISK"
    #: GPU memory.
    GPU = "GPU"


KIND_ORDER = {kind: index for index, kind in enumerate(TargetKind)}


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one check found. `latency_ms` is filled by the monitor when the probe leaves it None."""

    status: HealthStatus
    error: str | None = None
    detail: str = ""
    latency_ms: float | None = None


@runtime_checkable
class Probe(Protocol):
    """One target's check (`services.watchdog.probes`); it never raises for a failed target."""

    name: str
    kind: TargetKind
    address: str

    async def check(self, time_limit: float) -> ProbeResult:
        """Check once, answering within about `time_limit` seconds."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TargetState:
    """The watchdog's view of one target."""

    name: str
    kind: TargetKind
    #: Where it is checked (host:port, URL without credentials, path); never a secret.
    address: str
    status: HealthStatus
    #: Duration of the last check; None before the first one.
    latency_ms: float | None
    #: When the last check finished; None before the first one.
    last_check_time: datetime | None
    #: When `status` last changed, i.e. since when it holds.
    last_change_time: datetime
    #: The latest failure message (kept after recovery, with its time, for diagnosis).
    last_error: str | None
    last_error_at: datetime | None
    #: Human-readable facts of the last check ("free 40.1 GiB of 100.0 GiB (40%)").
    detail: str = ""
    #: Checks in a row that were not SERVING (NOT_APPLICABLE counts as fine).
    consecutive_failures: int = 0


class AlertKind(StrEnum):
    #: A target stopped serving, became unreachable or answers UNKNOWN.
    DOWN = "DOWN"
    #: A threshold was crossed (disk or GPU memory nearly full).
    DEGRADED = "DEGRADED"
    #: A target that alerted serves again.
    RECOVERED = "RECOVERED"
    #: Sent on request to check delivery.
    TEST = "TEST"
    #: A service exited unasked and its supervisor restarted it (`kitrading up`'s state file).
    RESTARTED = "RESTARTED"

    @property
    def severity(self) -> AlertSeverity:
        return _SEVERITY[self]


class AlertSeverity(StrEnum):
    INFO = "INFO"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


_SEVERITY = {
    AlertKind.DOWN: AlertSeverity.CRITICAL,
    AlertKind.DEGRADED: AlertSeverity.WARNING,
    AlertKind.RECOVERED: AlertSeverity.INFO,
    AlertKind.TEST: AlertSeverity.INFO,
    AlertKind.RESTARTED: AlertSeverity.WARNING,
}


class DeliveryStatus(StrEnum):
    """What happened to an alert's Telegram message."""

    #: Not delivered yet (in flight, or the process stopped before the outcome was recorded).
    PENDING = "PENDING"
    #: Accepted by Telegram for every chat.
    SENT = "SENT"
    #: Accepted for some chats only; `delivery_error` names the others.
    PARTIAL = "PARTIAL"
    #: Every chat failed after retries; see `delivery_error`.
    FAILED = "FAILED"
    #: Not sent: the same (target, kind) alerted within ALERT_COOLDOWN_MINUTES (or, for a recovery,
    #: its outage alert was suppressed).
    SUPPRESSED_COOLDOWN = "SUPPRESSED_COOLDOWN"
    #: Not sent: Telegram is off (no token or no chat ids).
    TELEGRAM_DISABLED = "TELEGRAM_DISABLED"


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert as kept in the history."""

    id: str
    created_at: datetime
    #: Target name ("forecast", "gateway", "database", "disk", "gpu"); "" for test alerts.
    target: str
    #: The target's kind (None for test alerts).
    target_kind: TargetKind | None
    kind: AlertKind
    #: The target's status when the alert was raised (None for test alerts).
    status: HealthStatus | None
    #: Plain text, one line ("forecast is UNREACHABLE: UNAVAILABLE: ...").
    message: str
    #: The Telegram message as sent (HTML when TELEGRAM_PARSE_MODE is HTML).
    text: str
    #: The target's error at the time (redacted), if any.
    error: str | None = None
    delivery: DeliveryStatus = DeliveryStatus.PENDING
    delivery_attempts: int = 0
    #: Why delivery failed or was skipped (redacted; never contains the token).
    delivery_error: str | None = None
    delivered_at: datetime | None = None

    @property
    def severity(self) -> AlertSeverity:
        return self.kind.severity


@dataclass(frozen=True, slots=True)
class AlertPage:
    """One page of the alert history, newest first; `next_page_token` is empty on the last page."""

    alerts: list[AlertRecord]
    next_page_token: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    status: DeliveryStatus
    attempts: int = 0
    error: str | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TelegramStatus:
    enabled: bool
    #: Why it is off ("" when on).
    reason: str
    chat_count: int
    #: Scheme and host of the Bot API base (no token, no path).
    api_host: str


@dataclass(frozen=True, slots=True)
class WatchdogStatus:
    """The status snapshot API's answer."""

    #: Sorted by kind (TargetKind order), then name.
    targets: list[TargetState]
    #: SERVING when every applicable target is SERVING, else the worst status seen.
    overall: HealthStatus
    telegram: TelegramStatus
    check_interval_seconds: float
    alert_cooldown_minutes: float
    started_at: datetime | None
    #: Whether the alert history is kept in PostgreSQL (False: in memory only).
    history_persistent: bool
    #: Alerts recorded but not yet written to the database (it was unavailable).
    unsaved_alerts: int = 0
    #: Targets per status value.
    counts: dict[str, int] = field(default_factory=dict)
    #: The latest check of any target (None before the first).
    check_time: datetime | None = None


# ---- the status stream (WatchdogDomain.watch) ----


@dataclass(frozen=True, slots=True)
class SnapshotEvent:
    """First item of every stream: the current status."""

    status: WatchdogStatus


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A target's status changed."""

    state: TargetState
    previous: HealthStatus


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert was raised (delivery PENDING), or its delivery outcome became known (same `id`)."""

    alert: AlertRecord


WatchEvent = SnapshotEvent | ChangeEvent | AlertEvent
