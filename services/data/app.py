"""The Data service as a `ServiceApp` for the shared runtime."""

from __future__ import annotations

from collections.abc import Sequence

from kitrading.data.v1 import service_pb2_grpc
from services.data import convert
from services.data.service import DataDomain
from services.data.servicer import DataServicer
from services.data.settings import DataSettings
from services.runtime.app import ServiceAppBase, load_settings
from services.runtime.interceptor import Observer, RpcRecord

#: Repeated fields whose length is the "rows" of a query log entry.
_ROW_FIELDS = ("symbols", "strategies", "candles", "jobs", "query_logs", "events", "datasets")


def _rows(record: RpcRecord) -> int:
    if record.response is None:
        return record.messages_sent
    for name in _ROW_FIELDS:
        if name in record.response.DESCRIPTOR.fields_by_name:
            return len(getattr(record.response, name))
    return 1 if record.code == "OK" else 0


class DataApp(ServiceAppBase):
    def __init__(self, settings: DataSettings | None = None) -> None:
        super().__init__("data", service_pb2_grpc.add_DataServiceServicer_to_server)
        self.settings = load_settings(settings, DataSettings.from_env)
        self.domain = DataDomain.create(self.settings)
        self.servicer = DataServicer(self.domain)

    async def on_start(self) -> None:
        await self.domain.start()

    async def on_stop(self) -> None:
        await self.domain.close()

    def healthy(self) -> bool:
        return self.domain.healthy

    def rpc_observers(self) -> Sequence[Observer]:
        return [self._record_query]

    def _record_query(self, record: RpcRecord) -> None:
        if record.short_method == "ListQueryLogs":
            return  # reading the log does not grow it
        self.domain.record_query(
            record.method,
            convert.request_json(record.request),
            record.duration_s * 1000.0,
            _rows(record),
            record.code,
        )
