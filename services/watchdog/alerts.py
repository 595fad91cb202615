"""Alert policy: when a target's check result becomes an alert, and what happens to the alert.

Rules (per target):
- A bad status (NOT_SERVING, UNREACHABLE, UNKNOWN) opens an outage and raises one alert: DOWN, or
  DEGRADED for a crossed threshold (disk or GPU memory NOT_SERVING). Nothing more is raised while the
  outage lasts, whatever bad status it turns into.
- When the target is SERVING (or NOT_APPLICABLE) again, a RECOVERED alert is raised.
- Cooldown: an alert whose (target, kind) was sent within ALERT_COOLDOWN_MINUTES is recorded but not
  sent (SUPPRESSED_COOLDOWN); so is the recovery of an outage whose alert was suppressed.
- Start-up grace: a target never seen SERVING since the watchdog started does not alert during
  WATCHDOG_STARTUP_GRACE_SECONDS (services still starting); one that was SERVING alerts at once.

Every alert is recorded (history) and, unless suppressed or Telegram is off, sent; the delivery
outcome is recorded on the alert. Recording and sending run in background tasks, so the check loop
never waits on Telegram or the database, and a database outage never stops an alert from being sent:
alerts that could not be written are kept and written when the database is back.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from services.runtime.errors import InvalidArgument
from services.watchdog.models import (
    AlertKind,
    AlertRecord,
    DeliveryStatus,
    HealthStatus,
    TargetKind,
    TargetState,
    utcnow,
)
from services.watchdog.settings import WatchdogSettings
from services.watchdog.store import AlertStore
from services.watchdog.telegram import TelegramClient, redact

log = logging.getLogger(__name__)

MAX_TEST_MESSAGE_CHARS = 1024
_RED, _ORANGE, _GREEN = "\N{LARGE RED CIRCLE}", "\N{LARGE ORANGE CIRCLE}", "\N{LARGE GREEN CIRCLE}"
_KIND_WORDS = {
    TargetKind.SERVICE: "gRPC",
    TargetKind.GATEWAY: "HTTP",
    TargetKind.DATABASE: "database",
    TargetKind.DISK: "disk",
    TargetKind.GPU: "GPU",
}
#: Targets whose NOT_SERVING means "a threshold is crossed" (DEGRADED) rather than DOWN.
_THRESHOLD_KINDS = {TargetKind.DISK, TargetKind.GPU}
#: Called with every alert when it is raised and again when its delivery outcome is known.
AlertListener = Callable[[AlertRecord], None]


def alert_kind_for(state: TargetState) -> AlertKind:
    if state.kind in _THRESHOLD_KINDS and state.status is HealthStatus.NOT_SERVING:
        return AlertKind.DEGRADED
    return AlertKind.DOWN


@dataclass(slots=True)
class _Outage:
    kind: AlertKind
    #: The latest bad status seen in this outage.
    status: HealthStatus
    #: Whether its alert went to Telegram (decides whether the recovery is sent).
    notified: bool
    started: datetime


# ---- message text ----


def format_duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


class MessageFormatter:
    """Builds (message, text): a plain one-line message for the history and the Telegram text,
    HTML (escaped) when the parse mode is HTML, else plain."""

    def __init__(self, parse_mode: str | None, source: str = "KI Trading watchdog") -> None:
        self.html = parse_mode == "HTML"
        self.source = source

    def _e(self, text: str) -> str:
        return html.escape(text, quote=False) if self.html else text

    def _b(self, text: str) -> str:
        return f"<b>{self._e(text)}</b>" if self.html else text

    def _target_line(self, state: TargetState) -> str:
        return f"{_KIND_WORDS[state.kind]} {self._e(state.address)}"

    def outage(self, kind: AlertKind, state: TargetState) -> tuple[str, str]:
        message = f"{state.name} is {state.status.value}"
        if state.last_error:
            message += f": {state.last_error}"
        icon = _ORANGE if kind is AlertKind.DEGRADED else _RED
        lines = [
            f"{icon} {self._b(state.name)} is {self._b(state.status.value)}",
            self._target_line(state),
        ]
        if state.last_error:
            lines.append(f"Error: {self._e(state.last_error)}")
        if state.detail and state.detail not in (state.last_error or ""):
            lines.append(self._e(state.detail))
        lines.append(f"Since: {_time(state.last_change_time)}")
        return redact(message), redact("\n".join(lines))

    def recovery(self, state: TargetState, outage: _Outage) -> tuple[str, str]:
        down_for = format_duration(state.last_change_time - outage.started)
        message = f"{state.name} recovered ({state.status.value}) after {down_for} {outage.status.value}"
        lines = [
            f"{_GREEN} {self._b(state.name)} recovered: {self._b(state.status.value)}",
            self._target_line(state),
            f"Was {outage.status.value} for {down_for} (since {_time(outage.started)})",
        ]
        return redact(message), redact("\n".join(lines))

    def restarted(self, name: str, restarts: int, last_exit: int | None, at: datetime) -> tuple[str, str]:
        exited = (
            f"exit code {last_exit}"
            if last_exit is not None and last_exit >= 0
            else (f"killed by signal {-last_exit}" if last_exit is not None else "exited")
        )
        message = f"{name} crashed ({exited}) and was restarted (crash restart {restarts})"
        lines = [
            f"{_ORANGE} {self._b(name)} crashed and was restarted",
            f"It {self._e(exited)}; its supervisor started it again (crash restart {restarts}).",
            f"Seen: {_time(at)}",
        ]
        return redact(message), redact("\n".join(lines))

    def test(self, note: str, at: datetime) -> tuple[str, str]:
        message = f"test alert: {note}" if note else "test alert"
        lines = [f"\N{TEST TUBE} {self._b('Test alert')} from the {self._e(self.source)}"]
        if note:
            lines.append(self._e(note))
        lines.append(f"Sent: {_time(at)}")
        return redact(message), redact("\n".join(lines))


# ---- the manager ----


class AlertManager:
    """Turns check results into recorded, delivered alerts. Feed it with `observe` (a Monitor listener)."""

    def __init__(
        self,
        settings: WatchdogSettings,
        store: AlertStore,
        telegram: TelegramClient | None,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        on_alert: AlertListener | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.telegram = telegram
        self.formatter = MessageFormatter(settings.telegram.parse_mode)
        self._clock = clock
        self._monotonic = monotonic
        self._on_alert = on_alert
        self._grace_until = monotonic() + settings.startup_grace_seconds
        self._seen_serving: set[str] = set()
        self._outages: dict[str, _Outage] = {}
        self._last_sent: dict[tuple[str, AlertKind], float] = {}
        self._tasks: set[asyncio.Task[AlertRecord]] = set()
        self._unsaved: dict[str, AlertRecord] = {}
        self._write_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None
        self._last_flush_try = 0.0

    def restart_grace(self) -> None:
        """Start the start-up grace window now (called when the checks start)."""
        self._grace_until = self._monotonic() + self.settings.startup_grace_seconds

    @property
    def unsaved_count(self) -> int:
        return len(self._unsaved)

    @property
    def open_outages(self) -> dict[str, AlertKind]:
        """Targets with an alerted, not yet recovered outage."""
        return {name: outage.kind for name, outage in self._outages.items()}

    # ---- policy ----

    def observe(self, previous: TargetState, current: TargetState) -> None:
        """Monitor listener: decide on an alert for this check result (never blocks)."""
        del previous  # the policy keeps its own per-target memory (outages, cooldowns)
        self._maybe_flush()
        if current.status is HealthStatus.SERVING:
            self._seen_serving.add(current.name)
        if current.status.is_bad:
            self._on_bad(current)
        else:
            self._on_fine(current)

    def _on_bad(self, state: TargetState) -> None:
        outage = self._outages.get(state.name)
        if outage is not None:  # one alert per outage, whatever it turns into
            outage.status = state.status
            return
        if state.name not in self._seen_serving and self._monotonic() < self._grace_until:
            return
        kind = alert_kind_for(state)
        message, text = self.formatter.outage(kind, state)
        record = self._record(state, kind, message=message, text=text, error=state.last_error)
        record = self._cooled(record, state.name, kind, "")
        self._outages[state.name] = _Outage(
            kind=kind,
            status=state.status,
            notified=record.delivery is not DeliveryStatus.SUPPRESSED_COOLDOWN,
            started=state.last_change_time,
        )
        self._dispatch(record)

    def _on_fine(self, state: TargetState) -> None:
        outage = self._outages.pop(state.name, None)
        if outage is None:
            return
        message, text = self.formatter.recovery(state, outage)
        record = self._record(state, AlertKind.RECOVERED, message=message, text=text, error=None)
        if not outage.notified:
            record = replace(
                record,
                delivery=DeliveryStatus.SUPPRESSED_COOLDOWN,
                delivery_error="the outage's alert was suppressed by the cooldown",
            )
        self._dispatch(record)

    def restarted(
        self, name: str, restarts: int, last_exit: int | None, state: TargetState | None = None
    ) -> None:
        """A crash restart its supervisor reported (never blocks): a RESTARTED alert, one per target
        per cooldown, whatever the checks saw meanwhile."""
        message, text = self.formatter.restarted(name, restarts, last_exit, self._clock())
        record = self._record(state, AlertKind.RESTARTED, message=message, text=text, error=None)
        self._dispatch(self._cooled(replace(record, target=name), name, AlertKind.RESTARTED, "a restart "))

    def _cooled(self, record: AlertRecord, target: str, kind: AlertKind, what: str) -> AlertRecord:
        """`record` to send, noting (target, kind) as sent now; within its cooldown, marked suppressed."""
        cooldown_left = self._cooldown_left(target, kind)
        if cooldown_left is None:
            self._last_sent[(target, kind)] = self._monotonic()
            return record
        return replace(
            record,
            delivery=DeliveryStatus.SUPPRESSED_COOLDOWN,
            delivery_error=f"cooldown: {target} alerted {what}less than "
            f"{self.settings.alert_cooldown_minutes:g} min ago ({format_duration(cooldown_left)} left)",
        )

    def _cooldown_left(self, target: str, kind: AlertKind) -> timedelta | None:
        last = self._last_sent.get((target, kind))
        if last is None:
            return None
        left = self.settings.alert_cooldown_seconds - (self._monotonic() - last)
        return timedelta(seconds=left) if left > 0 else None

    def _record(
        self,
        state: TargetState | None,
        kind: AlertKind,
        *,
        message: str,
        text: str,
        error: str | None,
    ) -> AlertRecord:
        record = AlertRecord(
            id=str(uuid.uuid4()),
            created_at=self._clock(),
            target=state.name if state is not None else "",
            target_kind=state.kind if state is not None else None,
            kind=kind,
            status=state.status if state is not None else None,
            message=message,
            text=text,
            error=redact(error) if error else None,
        )
        if self.telegram is None:
            record = replace(
                record,
                delivery=DeliveryStatus.TELEGRAM_DISABLED,
                delivery_error=f"Telegram is off: {self.settings.telegram.disabled_reason}",
            )
        return record

    # ---- test alerts ----

    async def send_test(self, note: str = "") -> AlertRecord:
        """Raise a TEST alert now, wait for its delivery and return it with the outcome."""
        note = note.strip()
        if len(note) > MAX_TEST_MESSAGE_CHARS:
            raise InvalidArgument("message", f"must be at most {MAX_TEST_MESSAGE_CHARS} characters")
        message, text = self.formatter.test(note, self._clock())
        record = self._record(None, AlertKind.TEST, message=message, text=text, error=None)
        self._log(record)
        self._notify(record)
        return await self._process(record)

    # ---- recording and delivery ----

    def _log(self, record: AlertRecord) -> None:
        log_fn = log.info if record.kind in (AlertKind.RECOVERED, AlertKind.TEST) else log.warning
        log_fn(
            "alert %s %s: %s (delivery %s)",
            record.kind.value,
            record.target or "-",
            record.message,
            record.delivery.value,
            extra={"alert_id": record.id, "target": record.target, "alert_kind": record.kind.value},
        )

    def _notify(self, record: AlertRecord) -> None:
        if self._on_alert is not None:
            try:
                self._on_alert(record)
            except Exception:
                log.exception("alert listener failed")

    def _dispatch(self, record: AlertRecord) -> None:
        self._log(record)
        self._notify(record)
        task = asyncio.create_task(self._process(record), name=f"watchdog-alert-{record.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, record: AlertRecord) -> AlertRecord:
        first_save = asyncio.create_task(self._save(record))
        if record.delivery is DeliveryStatus.PENDING and self.telegram is not None:
            try:
                outcome = await self.telegram.broadcast(record.text)
                record = replace(
                    record,
                    delivery=outcome.status,
                    delivery_attempts=outcome.attempts,
                    delivery_error=redact(outcome.error) if outcome.error else None,
                    delivered_at=outcome.delivered_at,
                )
            except Exception as exc:  # a bug, not a delivery failure: record it, keep going
                log.exception("telegram delivery of alert %s crashed", record.id)
                record = replace(
                    record, delivery=DeliveryStatus.FAILED, delivery_error=redact(f"{type(exc).__name__}")
                )
            level = logging.INFO if record.delivery is DeliveryStatus.SENT else logging.WARNING
            log.log(
                level,
                "alert %s delivery %s after %d attempt(s)%s",
                record.id,
                record.delivery.value,
                record.delivery_attempts,
                f": {record.delivery_error}" if record.delivery_error else "",
            )
            self._notify(record)
            await first_save
            await self._save(record)
        else:
            await first_save
        return record

    async def _save(self, record: AlertRecord) -> None:
        async with self._write_lock:
            if self._unsaved and not await self._flush_locked():
                self._keep(record)
                return
            try:
                await self._store_one(record)
            except Exception as exc:
                log.warning("alert %s not recorded yet (%s); will retry", record.id, _reason(exc))
                self._keep(record)

    def _keep(self, record: AlertRecord) -> None:
        """Keep an alert for a later write; the oldest go first past MAX_UNSAVED (memory stays bounded
        through a long database outage)."""
        self._unsaved[record.id] = record
        while len(self._unsaved) > MAX_UNSAVED:
            oldest = min(self._unsaved.values(), key=lambda r: r.created_at)
            del self._unsaved[oldest.id]
            log.error("alert %s dropped unrecorded: more than %d alerts waiting", oldest.id, MAX_UNSAVED)

    async def _store_one(self, record: AlertRecord) -> None:
        """Write one alert. A record the store refuses for its content (not an outage) is written
        once more with its text made storable, then given up: a poison record never blocks others."""
        try:
            await self.store.save(record)
        except Exception as exc:
            if is_outage(exc):
                raise
            clean = storable(record)
            try:
                await self.store.save(clean)
                log.warning("alert %s recorded with its text made storable (%s)", record.id, _reason(exc))
            except Exception as again:
                if is_outage(again):
                    raise
                log.error("alert %s cannot be recorded and is dropped (%s)", record.id, _reason(again))

    async def _flush_locked(self) -> bool:
        """Write the alerts kept while the database was down, oldest first; False if it still fails."""
        for alert_id, record in sorted(self._unsaved.items(), key=lambda item: item[1].created_at):
            try:
                await self._store_one(record)
            except Exception as exc:
                log.debug("alert history still unavailable: %s", _reason(exc))
                return False
            # A newer version may have replaced it meanwhile only under this lock, so drop it.
            self._unsaved.pop(alert_id, None)
        return True

    def _maybe_flush(self) -> None:
        if not self._unsaved or (self._flush_task is not None and not self._flush_task.done()):
            return
        now = self._monotonic()
        if now - self._last_flush_try < self.settings.check_interval_seconds:
            return
        self._last_flush_try = now

        async def flush() -> None:
            async with self._write_lock:
                if await self._flush_locked():
                    log.info("alert history written after the database came back")

        self._flush_task = asyncio.create_task(flush(), name="watchdog-alert-flush")

    def _pending(self) -> list[asyncio.Future[Any]]:
        pending: list[asyncio.Future[Any]] = [t for t in self._tasks if not t.done()]
        if self._flush_task is not None and not self._flush_task.done():
            pending.append(self._flush_task)
        return pending

    async def drain(self, wait_seconds: float | None = None) -> None:
        """Wait until every raised alert is delivered and recorded (or `wait_seconds` pass)."""
        pending = self._pending()
        if pending:
            await asyncio.wait(pending, timeout=wait_seconds)

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Give in-flight alerts `grace_seconds`, then cancel them."""
        await self.drain(grace_seconds)
        tasks = self._pending()
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            if pending:
                log.warning("%d alert task(s) did not stop", len(pending))


#: Alerts kept in memory while the history database is away, at most.
MAX_UNSAVED = 1000


def is_outage(exc: BaseException) -> bool:
    """Whether a failed write means the store is away (keep the record and retry) rather than that
    it refuses this record's content (asyncpg's DataError family: NUL or invalid text, a value too
    long...)."""
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        return True
    return not isinstance(
        exc, asyncpg.exceptions.DataError | asyncpg.exceptions.IntegrityConstraintViolationError
    )


def _storable_text(text: str | None) -> str | None:
    if text is None:
        return None
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def storable(record: AlertRecord) -> AlertRecord:
    """The record with every text field storable in PostgreSQL (NUL and lone surrogates replaced)."""
    return replace(
        record,
        target=_storable_text(record.target) or "",
        message=_storable_text(record.message) or "",
        text=_storable_text(record.text) or "",
        error=_storable_text(record.error),
        delivery_error=_storable_text(record.delivery_error),
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]
