"""WatchdogService servicer: protos in, protos out; every call is one call into `WatchdogDomain`.

Validation, error mapping, limits, metrics and logs are the runtime's (services/runtime); this
module only translates. The domain is attached by the app's `start()` (it needs the database
pool); the runtime refuses calls with UNAVAILABLE until then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from kitrading.watchdog.v1 import request_response_pb2 as rr
from kitrading.watchdog.v1 import service_pb2_grpc
from services.runtime.errors import Unavailable
from services.watchdog import convert as cv
from services.watchdog.service import WatchdogDomain

Context = Any  # grpc.aio.ServicerContext; unused here: the runtime owns status handling


class WatchdogServicer(service_pb2_grpc.WatchdogServiceServicer):
    def __init__(self, domain: WatchdogDomain | None = None) -> None:
        self._domain = domain

    def attach(self, domain: WatchdogDomain | None) -> None:
        self._domain = domain

    @property
    def domain(self) -> WatchdogDomain:
        if self._domain is None:  # the runtime refuses calls before start(); kept for direct callers
            raise Unavailable("the watchdog is starting", reason="STARTING")
        return self._domain

    async def GetStatus(self, request: rr.GetStatusRequest, context: Context) -> rr.GetStatusResponse:
        return rr.GetStatusResponse(status=cv.status_out(self.domain.status()))

    async def ListAlerts(self, request: rr.ListAlertsRequest, context: Context) -> rr.ListAlertsResponse:
        page = await self.domain.list_alerts(
            page_size=request.page_size,
            page_token=request.page_token,
            target=request.target,
            kind=cv.alert_kind_in(request.kind),
        )
        return rr.ListAlertsResponse(
            alerts=[cv.alert_out(a) for a in page.alerts], next_page_token=page.next_page_token
        )

    async def SendTestAlert(
        self, request: rr.SendTestAlertRequest, context: Context
    ) -> rr.SendTestAlertResponse:
        alert = await self.domain.send_test_alert(request.message)
        return rr.SendTestAlertResponse(alert=cv.alert_out(alert))

    async def WatchStatus(
        self, request: rr.WatchStatusRequest, context: Context
    ) -> AsyncIterator[rr.WatchStatusResponse]:
        async with aclosing(self.domain.watch(list(request.targets))) as events:
            async for event in events:
                yield cv.watch_event_out(event)
