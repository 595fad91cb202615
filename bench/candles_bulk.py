"""5,000 candles through the mesh, rows against columns, beside their floors; then many at once.

    .venv/bin/python -m bench.candles_bulk [--calls 40] [--rounds 3] [--concurrent 200] [--json]

Setup: embedded PostgreSQL and `python -m services.data` with the bundled samples (EURUSD H1: 5,000
bars), behind the real gateway (Envoy). Every figure is one 5,000-bar page of EURUSD H1, newest
first, measured in this run, sequentially (one call at a time, the median of `--calls` calls, best of
`--rounds` rounds) up to what a program holds in the end (numpy arrays or the pandas frame the
model services use):

- database floor: the Data service's own query on asyncpg in this process (rows as records, and
  the binary COPY the column form uses, parsed into lists);
- direct gRPC to Data, rows (`ListCandles`, one `Candle` per bar) and columns
  (`view=CANDLE_VIEW_COLUMNS`), each decoded into the model services' frame
  (`services/training/data_client.py`: `candles_frame` / `columns_frame`);
- gRPC floor: a bare `grpc.aio` server in its own process answering the same columns from memory;
- Arrow Flight: a bare `pyarrow.flight` server in its own process serving the same table from memory
  (`do_get`, read into numpy), the field's anchor for bulk columns over gRPC;
- JSON via the gateway, rows and columns (`?view=CANDLE_VIEW_COLUMNS`), parsed by `json`.

Then `--concurrent` reads of the page sent at once over one channel, direct to Data (rows, then
columns): p50 / p99 / max and the status codes. Beyond capacity, twice as many at once: direct to a
Data service whose admission is set low (`KITRADING_DATA_MAX_CONCURRENT_RPCS=--admission`), and as
JSON through a gateway whose rate limits are on and low (for 200: 20/s, 50 at once): the calls beyond are
answered RESOURCE_EXHAUSTED / HTTP 429, never left hanging.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from services.runtime.threads import limit_math_threads

limit_math_threads(1)

import asyncpg  # noqa: E402
import grpc  # noqa: E402
import grpc.aio  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench._mesh import data_and_gateway, free_port, wait_serving  # noqa: E402
from kitrading.common.v1 import market_pb2  # noqa: E402
from kitrading.data.v1 import request_response_pb2 as rr  # noqa: E402
from kitrading.data.v1 import resources_pb2 as pb  # noqa: E402
from kitrading.data.v1 import service_pb2_grpc  # noqa: E402
from services.data.models import Timeframe  # noqa: E402
from services.data.storage import Repository  # noqa: E402
from services.training.data_client import candles_frame, columns_frame  # noqa: E402

SYMBOL = "EURUSD"
PAGE = 5000
BARE_SERVICE = "kitrading.data.v1.DataService"


def _request(view: pb.CandleView.ValueType) -> rr.ListCandlesRequest:
    return rr.ListCandlesRequest(
        symbol=SYMBOL, timeframe=market_pb2.TIMEFRAME_H1, page_size=PAGE, descending=True, view=view
    )


def _arrays(columns: market_pb2.CandleColumns) -> list[np.ndarray]:
    return [np.array(columns.times_unix_micros, dtype=np.int64)] + [
        np.array(getattr(columns, name), dtype=np.float64)
        for name in ("opens", "highs", "lows", "closes", "volumes")
    ]


# -- the floors in their own processes ------------------------------------------------------------


def _page_from_samples() -> rr.ListCandlesResponse:
    """The same 5,000 bars the Data service serves, as one column page (from the bundled file)."""
    from services.data import convert as cv
    from services.data.models import CandleColumns
    from services.data.samples import SAMPLES, load_candles

    bars = load_candles([s for s in SAMPLES if s.symbol == SYMBOL])[SYMBOL][-PAGE:][::-1]
    columns = CandleColumns(
        np.array([round(b.time.timestamp()) * 1_000_000 for b in bars], dtype=np.int64),
        *(np.array([getattr(b, name) for b in bars]) for name in ("open", "high", "low", "close", "volume")),
    )
    return rr.ListCandlesResponse(columns=cv.candle_columns_out(columns))


def serve_bare(port: int) -> None:
    """A bare grpc.aio server answering ListCandles with a prebuilt column page (the gRPC floor)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    page = _page_from_samples()

    class Bare(service_pb2_grpc.DataServiceServicer):
        async def ListCandles(self, request: rr.ListCandlesRequest, context: Any) -> rr.ListCandlesResponse:
            return page

    async def main() -> None:
        server = grpc.aio.server()
        service_pb2_grpc.add_DataServiceServicer_to_server(Bare(), server)  # type: ignore[abstract]
        checker = health.aio.HealthServicer()
        await checker.set(BARE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def serve_flight(port: int) -> None:
    """A bare Arrow Flight server with the same bars as an Arrow table in memory."""
    import pyarrow as pa
    from pyarrow import flight

    columns = _page_from_samples().columns
    table = pa.table(
        {
            "time": pa.array(list(columns.times_unix_micros), pa.timestamp("us", tz="UTC")),
            **{
                name: pa.array(list(getattr(columns, name)), pa.float64())
                for name in ("opens", "highs", "lows", "closes", "volumes")
            },
        }
    )

    class Server(flight.FlightServerBase):
        def do_get(self, context: Any, ticket: Any) -> Any:
            return flight.RecordBatchStream(table)

    Server(f"grpc://127.0.0.1:{port}").serve()


@contextlib.contextmanager
def floor_process(mode: str) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.candles_bulk", mode, str(port)])
    try:
        if mode == "--serve-bare":
            wait_serving(f"127.0.0.1:{port}", BARE_SERVICE)
        else:
            from pyarrow import flight

            deadline = time.monotonic() + 60
            while True:
                try:
                    flight.connect(f"grpc://127.0.0.1:{port}").wait_for_available(timeout=1)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(30)


# -- sequential figures -----------------------------------------------------------------------------


def per_call_ms(call: Callable[[], object], calls: int, rounds: int) -> float:
    """The best round's median wall time of one call, in ms (after a warm-up call)."""
    call()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
        medians.append(statistics.median(times))
    return min(medians)


def database_calls(
    database_url: str,
) -> tuple[Callable[[], object], Callable[[], object], Callable[[], None]]:
    """The Data service's two queries on asyncpg, on a private event loop (sync wrappers)."""
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(database_url))
    repo = Repository()
    kwargs: dict[str, Any] = {
        "start": None,
        "end": None,
        "after": None,
        "descending": True,
        "limit": PAGE + 1,
    }

    def rows() -> object:
        return loop.run_until_complete(repo.list_candles(conn, SYMBOL, Timeframe.H1, **kwargs))

    def columns() -> object:
        return loop.run_until_complete(repo.list_candle_columns(conn, SYMBOL, Timeframe.H1, **kwargs))

    def close() -> None:
        loop.run_until_complete(conn.close())
        loop.close()

    return rows, columns, close


def sequential(mesh: Any, calls: int, rounds: int) -> dict[str, dict[str, float]]:
    from pyarrow import flight

    out: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        rows_q, columns_q, close = database_calls(mesh.database_url)
        stack.callback(close)
        out["database floor: query as rows (asyncpg records)"] = per_call_ms(rows_q, calls, rounds)
        out["database floor: query as columns (binary COPY -> numpy)"] = per_call_ms(columns_q, calls, rounds)

        direct = service_pb2_grpc.DataServiceStub(
            stack.enter_context(grpc.insecure_channel(mesh.data_target))
        )
        rows_request, columns_request = _request(pb.CANDLE_VIEW_ROWS), _request(pb.CANDLE_VIEW_COLUMNS)
        out["direct gRPC, rows -> frame"] = per_call_ms(
            lambda: candles_frame(direct.ListCandles(rows_request, timeout=30).candles), calls, rounds
        )
        out["direct gRPC, columns -> numpy"] = per_call_ms(
            lambda: _arrays(direct.ListCandles(columns_request, timeout=30).columns), calls, rounds
        )
        out["direct gRPC, columns -> frame"] = per_call_ms(
            lambda: columns_frame([direct.ListCandles(columns_request, timeout=30).columns]), calls, rounds
        )

        bare_port = stack.enter_context(floor_process("--serve-bare"))
        bare = service_pb2_grpc.DataServiceStub(
            stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{bare_port}"))
        )
        out["gRPC floor: bare grpc.aio, columns from memory -> numpy"] = per_call_ms(
            lambda: _arrays(bare.ListCandles(columns_request, timeout=30).columns), calls, rounds
        )
        flight_port = stack.enter_context(floor_process("--serve-flight"))
        client = flight.connect(f"grpc://127.0.0.1:{flight_port}")
        stack.callback(client.close)
        ticket = flight.Ticket(b"EURUSD/H1")

        def flight_get() -> object:
            table = client.do_get(ticket).read_all()
            return [column.to_numpy() for column in table.columns]

        out["Arrow Flight: bare server, table from memory -> numpy"] = per_call_ms(flight_get, calls, rounds)

        http = stack.enter_context(httpx.Client(base_url=mesh.gateway_url, timeout=60))
        path = f"/api/v1/symbols/{SYMBOL}/candles"
        params: dict[str, str | int] = {"timeframe": "TIMEFRAME_H1", "page_size": PAGE, "descending": "true"}

        def get_json(view: str) -> object:
            reply = http.get(path, params={**params, "view": view})
            reply.raise_for_status()
            return json.loads(reply.content)

        out["JSON via gateway, rows"] = per_call_ms(
            lambda: get_json("CANDLE_VIEW_ROWS"), max(5, calls // 4), rounds
        )
        out["JSON via gateway, columns"] = per_call_ms(lambda: get_json("CANDLE_VIEW_COLUMNS"), calls, rounds)
    return {
        name: {"ms_per_page": round(ms, 2), "candles_per_s": round(PAGE / ms * 1e3)}
        for name, ms in out.items()
    }


# -- many at once ---------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def burst(target: str, view: pb.CandleView.ValueType, calls: int) -> dict[str, Any]:
    request = _request(view)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        await stub.ListCandles(request, timeout=60)

        async def one() -> tuple[str, float]:
            start = time.perf_counter()
            try:
                reply = await stub.ListCandles(request, timeout=60)
                if view == pb.CANDLE_VIEW_COLUMNS:
                    _arrays(reply.columns)
                else:
                    candles_frame(reply.candles)
                return "OK", (time.perf_counter() - start) * 1e3
            except grpc.aio.AioRpcError as exc:
                return exc.code().name, (time.perf_counter() - start) * 1e3

        started = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(calls)))
        wall = time.perf_counter() - started
    return _summary(results, calls, wall)


async def http_burst(base_url: str, calls: int) -> dict[str, Any]:
    params: dict[str, str | int] = {
        "timeframe": "TIMEFRAME_H1",
        "page_size": PAGE,
        "descending": "true",
        "view": "CANDLE_VIEW_COLUMNS",
    }
    limits = httpx.Limits(max_connections=calls, max_keepalive_connections=calls)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:
        path = f"/api/v1/symbols/{SYMBOL}/candles"
        await http.get(path, params=params)

        async def one() -> tuple[str, float]:
            start = time.perf_counter()
            reply = await http.get(path, params=params)
            return str(reply.status_code), (time.perf_counter() - start) * 1e3

        started = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(calls)))
        wall = time.perf_counter() - started
    return _summary(results, calls, wall, ok="200")


def _summary(results: list[tuple[str, float]], calls: int, wall: float, ok: str = "OK") -> dict[str, Any]:
    codes: dict[str, int] = {}
    for code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    served = [ms for code, ms in results if code == ok]
    refused = [ms for code, ms in results if code != ok]
    return {
        "calls": calls,
        "codes": codes,
        "served_p50_ms": round(_percentile(served, 50)),
        "served_p99_ms": round(_percentile(served, 99)),
        "served_max_ms": round(max(served, default=0.0)),
        "refused_max_ms": round(max(refused, default=0.0)),
        "wall_s": round(wall, 2),
    }


def wait_for_samples(target: str) -> None:
    deadline = time.monotonic() + 180
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.DataServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                symbol = stub.GetSymbol(rr.GetSymbolRequest(symbol=SYMBOL), timeout=5).symbol
                if any(s.timeframe == market_pb2.TIMEFRAME_H1 and s.count >= PAGE for s in symbol.series):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"{SYMBOL} H1 samples not imported")


def run(calls: int, rounds: int, concurrent: int, admission: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with data_and_gateway(import_samples=True) as mesh:
        wait_for_samples(mesh.data_target)
        result["sequential"] = sequential(mesh, calls, rounds)
        for name, view in (("rows", pb.CANDLE_VIEW_ROWS), ("columns", pb.CANDLE_VIEW_COLUMNS)):
            result[f"{concurrent} at once, direct gRPC, {name}"] = asyncio.run(
                burst(mesh.data_target, view, concurrent)
            )
    # Beyond capacity: twice the burst, against Data's admission set low and the gateway's rate
    # limits on and set low (for 200: 20/s, 50 at once per client).
    per_second, at_once = max(2, concurrent // 10), max(5, concurrent // 4)
    env = {
        "KITRADING_DATA_MAX_CONCURRENT_RPCS": str(admission),
        "KITRADING_GATEWAY_RATE_LIMITS": "on",
        "KITRADING_GATEWAY_RATE_LIMIT_PER_SECOND": str(per_second),
        "KITRADING_GATEWAY_RATE_LIMIT_BURST": str(at_once),
    }
    with data_and_gateway(import_samples=True, extra_env=env) as mesh:
        wait_for_samples(mesh.data_target)
        result[f"{2 * concurrent} at once, direct gRPC, columns, admission {admission}"] = asyncio.run(
            burst(mesh.data_target, pb.CANDLE_VIEW_COLUMNS, 2 * concurrent)
        )
        result[
            f"{2 * concurrent} at once, JSON via gateway, columns, rate limits {per_second}/s burst {at_once}"
        ] = asyncio.run(http_burst(mesh.gateway_url, 2 * concurrent))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--serve-bare", "--serve-flight"):
        (serve_bare if argv[0] == "--serve-bare" else serve_flight)(int(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--admission", type=int, default=8, help="Data's admission limit beyond capacity")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.calls, args.rounds, args.concurrent, args.admission)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"One page of {PAGE} EURUSD H1 bars, sequential (median of {args.calls}, best of {args.rounds}):")
    print("| path | ms per page | candles/s |\n|---|---|---|")
    for name, figures in result["sequential"].items():
        print(f"| {name} | {figures['ms_per_page']} | {figures['candles_per_s']:,} |")
    ms = {name: figures["ms_per_page"] for name, figures in result["sequential"].items()}
    columns = ms["direct gRPC, columns -> numpy"]
    speedup = ms["direct gRPC, rows -> frame"] / ms["direct gRPC, columns -> frame"]
    bare = columns / ms["gRPC floor: bare grpc.aio, columns from memory -> numpy"]
    arrow = columns / ms["Arrow Flight: bare server, table from memory -> numpy"]
    target = "met" if PAGE / columns * 1e3 >= 1e6 else "missed"
    print(f"\ncolumns vs rows (direct gRPC, into the frame): {speedup:.2f}x faster")
    print(f"direct columns / bare gRPC floor: {bare:.2f}x; / Arrow Flight: {arrow:.2f}x")
    print(f"target >= 1,000,000 candles/s (direct gRPC, columns): {target}")
    for name in [k for k in result if k != "sequential"]:
        print(f"\n{name}: {json.dumps(result[name])}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
