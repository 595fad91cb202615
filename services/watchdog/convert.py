"""Protos <-> Watchdog domain types: the servicer's vocabulary. No logic beyond the mapping.

Two domain values have no twin in the contract:

- `HealthStatus.NOT_APPLICABLE` (a check that does not apply on this machine, e.g. GPU memory
  without a GPU) -> `TARGET_STATUS_UNSPECIFIED`, with `detail` starting `not applicable: `. It never
  alerts and is not "down": a client computing an overall status skips it, as the domain does.
- `DeliveryStatus.PARTIAL` (Telegram took the message for some chats only) -> `DELIVERY_STATE_SENT`
  (the alert did reach Telegram) with `delivery_error` naming the chats that failed.
"""

from __future__ import annotations

import math

from kitrading.watchdog.v1 import request_response_pb2 as rr
from kitrading.watchdog.v1 import resources_pb2 as pb
from services.runtime.protos import timestamp
from services.watchdog.models import (
    AlertEvent,
    AlertKind,
    AlertRecord,
    AlertSeverity,
    ChangeEvent,
    DeliveryStatus,
    HealthStatus,
    SnapshotEvent,
    TargetKind,
    TargetState,
    WatchdogStatus,
    WatchEvent,
)

NOT_APPLICABLE_PREFIX = "not applicable: "

TARGET_STATUS: dict[HealthStatus, pb.TargetStatus.ValueType] = {
    HealthStatus.SERVING: pb.TARGET_STATUS_SERVING,
    HealthStatus.NOT_SERVING: pb.TARGET_STATUS_NOT_SERVING,
    HealthStatus.UNREACHABLE: pb.TARGET_STATUS_UNREACHABLE,
    HealthStatus.UNKNOWN: pb.TARGET_STATUS_UNKNOWN,
    HealthStatus.NOT_APPLICABLE: pb.TARGET_STATUS_UNSPECIFIED,
}
TARGET_KIND: dict[TargetKind, pb.TargetKind.ValueType] = {
    TargetKind.SERVICE: pb.TARGET_KIND_SERVICE,
    TargetKind.GATEWAY: pb.TARGET_KIND_GATEWAY,
    TargetKind.DATABASE: pb.TARGET_KIND_DATABASE,
    TargetKind.DISK: pb.TARGET_KIND_DISK,
    TargetKind.GPU: pb.TARGET_KIND_GPU,
}
ALERT_KIND: dict[AlertKind, pb.AlertKind.ValueType] = {
    AlertKind.DOWN: pb.ALERT_KIND_DOWN,
    AlertKind.RECOVERED: pb.ALERT_KIND_RECOVERED,
    AlertKind.TEST: pb.ALERT_KIND_TEST,
    AlertKind.DEGRADED: pb.ALERT_KIND_DEGRADED,
    AlertKind.RESTARTED: pb.ALERT_KIND_RESTARTED,
}
ALERT_KIND_IN: dict[int, AlertKind] = {int(v): k for k, v in ALERT_KIND.items()}
SEVERITY: dict[AlertSeverity, pb.AlertSeverity.ValueType] = {
    AlertSeverity.INFO: pb.ALERT_SEVERITY_INFO,
    AlertSeverity.WARNING: pb.ALERT_SEVERITY_WARNING,
    AlertSeverity.CRITICAL: pb.ALERT_SEVERITY_CRITICAL,
}
DELIVERY: dict[DeliveryStatus, pb.DeliveryState.ValueType] = {
    DeliveryStatus.PENDING: pb.DELIVERY_STATE_PENDING,
    DeliveryStatus.SENT: pb.DELIVERY_STATE_SENT,
    DeliveryStatus.PARTIAL: pb.DELIVERY_STATE_SENT,
    DeliveryStatus.FAILED: pb.DELIVERY_STATE_FAILED,
    DeliveryStatus.SUPPRESSED_COOLDOWN: pb.DELIVERY_STATE_SUPPRESSED_COOLDOWN,
    DeliveryStatus.TELEGRAM_DISABLED: pb.DELIVERY_STATE_TELEGRAM_DISABLED,
}


def alert_kind_in(value: int) -> AlertKind | None:
    """`ALERT_KIND_DOWN` (by number) -> `AlertKind.DOWN`; UNSPECIFIED -> None (all kinds)."""
    return ALERT_KIND_IN.get(int(value))


def target_out(state: TargetState) -> pb.Target:
    detail = state.detail
    if state.status is HealthStatus.NOT_APPLICABLE:
        detail = NOT_APPLICABLE_PREFIX + (detail or "this check does not apply here")
    return pb.Target(
        name=state.name,
        kind=TARGET_KIND[state.kind],
        status=TARGET_STATUS[state.status],
        address=state.address,
        latency_ms=state.latency_ms or 0.0,
        last_check_time=timestamp(state.last_check_time),
        last_change_time=timestamp(state.last_change_time),
        last_error=state.last_error or "",
        detail=detail,
        consecutive_failures=state.consecutive_failures,
    )


def status_out(status: WatchdogStatus) -> pb.MeshStatus:
    return pb.MeshStatus(
        targets=[target_out(t) for t in status.targets],
        telegram_enabled=status.telegram.enabled,
        # Whole seconds in the contract: a sub-second interval (tests) shows as 1, never as 0.
        check_interval_seconds=max(1, math.ceil(status.check_interval_seconds)),
        alert_cooldown_seconds=round(status.alert_cooldown_minutes * 60),
        check_time=timestamp(status.check_time),
    )


def alert_out(alert: AlertRecord) -> pb.Alert:
    return pb.Alert(
        alert_id=alert.id,
        target=alert.target,
        target_kind=(
            TARGET_KIND[alert.target_kind] if alert.target_kind is not None else pb.TARGET_KIND_UNSPECIFIED
        ),
        kind=ALERT_KIND[alert.kind],
        severity=SEVERITY[alert.severity],
        message=alert.message,
        create_time=timestamp(alert.created_at),
        delivery_state=DELIVERY[alert.delivery],
        delivery_error=alert.delivery_error or "",
    )


def watch_event_out(event: WatchEvent) -> rr.WatchStatusResponse:
    if isinstance(event, SnapshotEvent):
        return rr.WatchStatusResponse(snapshot=status_out(event.status))
    if isinstance(event, ChangeEvent):
        change = pb.TargetChange(
            target=target_out(event.state), previous_status=TARGET_STATUS[event.previous]
        )
        return rr.WatchStatusResponse(change=change)
    if isinstance(event, AlertEvent):
        return rr.WatchStatusResponse(alert=alert_out(event.alert))
    raise TypeError(f"not a watch event: {type(event).__name__}")
