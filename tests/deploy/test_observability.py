"""deploy/observability/: generated from the registry and the panel spec, and every metric a panel, a
dashboard variable or an alert queries is one the services really export, so a renamed metric or
label cannot leave a panel empty or an alert silent.

The exported names come from the real prometheus_client registry of a process that imported every
service's app (a subprocess: a clean registry), and from a scrape of a real running service's
/metrics in-process. Prometheus's own `promtool` (deploy/promtool.sh, fetched by `make test`) checks
the config, parses every dashboard query and unit-tests the alert rules; without it those tests skip
and the structural checks still run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from kitrading.mesh import SERVICES
from tests.deploy.conftest import DEPLOY, ROOT

OBSERVABILITY = DEPLOY / "observability"
DASHBOARDS = OBSERVABILITY / "grafana" / "dashboards"

#: Series Prometheus makes itself for every target and alert.
PROMETHEUS_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
    "ALERTS",
    "ALERTS_FOR_STATE",
}
#: Labels every scraped series gets from its target (prometheus.yml: `service` by relabelling).
TARGET_LABELS = {"service", "job", "instance"}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("observability_generate", OBSERVABILITY / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# ---- PromQL: the metric names and label matchers an expression uses ---------------------------------

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w:$])([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*\"")
_IDENTIFIER = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)(?![\w:])")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` selects: not functions, aggregations, keywords, label names in
    `by (...)` / `on (...)`, matchers, durations, numbers or Grafana's `$variables`."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(1)
        if re.match(r"\s*\(", text[match.end() :]) or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def matched_labels(expr: str) -> list[tuple[str, str]]:
    """(metric, label) of every label matcher `metric{label=...}` in `expr`."""
    pairs = []
    for metric, body in _SELECTOR.findall(expr):
        for label, _op in _MATCHER.findall(body):
            pairs.append((metric, label))
    return pairs


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (service, le) (rate(kitrading_rpc_latency_seconds_bucket{service=~"$service", '
            'method!~".*/(Watch[^/]*|[^/]*Stream)"}[$__rate_interval]))',
            {"kitrading_rpc_latency_seconds_bucket"},
        ),
        ("histogram_quantile(0.95, sum by (le) (rate(a_bucket[5m])))", {"a_bucket"}),
        ("x_total / on (service) group_left (model) y > bool 0.5", {"x_total", "y"}),
        ('up{service="data"} == 0 or absent(up{service="data"})', {"up"}),
        ("topk(10, rate(m_total[1h30m] offset 5m)) * 1e3", {"m_total"}),
        ('label_replace(g, "dst", "$1", "src", "(.*)") unless h', {"g", "h"}),
        ("max_over_time(rate(c_total[5m])[1h:1m]) @ start()", {"c_total"}),
        ('count without (instance) (nan_count{job="a"}) + inf', {"nan_count"}),
    ],
)
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_matched_labels_of_promql() -> None:
    expr = 'a{service=~"$service", code!="OK"} / b{} + c{le="+Inf"}'
    assert matched_labels(expr) == [("a", "service"), ("a", "code"), ("c", "le")]


# ---- what the dashboards and alerts query --------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((OBSERVABILITY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and alert rule."""
    found = []
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                found.append((f"{name}: {panel['title']} [{target['refId']}]", target["expr"]))
    found += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    return found


def variable_metrics() -> list[tuple[str, str, str]]:
    """(where, metric, label) of every `label_values(metric, label)` dashboard variable."""
    found = []
    for name, dashboard in dashboards().items():
        for variable in dashboard["templating"]["list"]:
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*(\w+)\s*\)", query)
            assert match, f"{name}: variable {variable['name']}: {query}"
            found.append((f"{name}: ${variable['name']}", match.group(1), match.group(2)))
    return found


# ---- what the services export --------------------------------------------------------------------

_EXPORT_SCRIPT = """
import importlib, json, sys
from prometheus_client.metrics import MetricWrapperBase
for module in sys.argv[1:]:
    importlib.import_module(module)
from services.runtime.metrics import REGISTRY
out = {}
for collector in list(REGISTRY._collector_to_names):
    if isinstance(collector, MetricWrapperBase):
        families = [(collector._name, collector._type, list(collector._labelnames))]
    else:
        describe = getattr(collector, "describe", None)
        metrics = describe() if describe is not None else collector.collect()
        families = [(m.name, m.type, sorted({*getattr(m, "_labelnames", ()),
                     *(k for s in m.samples for k in s.labels)})) for m in metrics]
    for name, kind, labels in families:
        out[name] = {"type": kind, "labels": labels}
print(json.dumps(out))
"""


def sample_names(family: str, kind: str) -> set[str]:
    """The series names a family of `kind` is exposed as (the text format)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }.get(kind, ("",))
    return {family + suffix for suffix in suffixes}


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """series name -> its label names, of a process that imported every service's app."""
    modules = [f"{s.module}.app" for s in SERVICES]
    result = subprocess.run(
        [sys.executable, "-c", _EXPORT_SCRIPT, *modules],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    families = json.loads(result.stdout.strip().splitlines()[-1])
    series: dict[str, set[str]] = {}
    for family, info in families.items():
        extra = {"le"} if info["type"] in ("histogram", "gaugehistogram") else set()
        for name in sample_names(family, info["type"]):
            series[name] = set(info["labels"]) | (extra if name.endswith("_bucket") else set())
    return series


def test_the_export_listing_sees_the_runtime_and_service_metrics(exported: dict[str, set[str]]) -> None:
    assert exported["kitrading_rpc_requests_total"] == {"service", "method", "code"}
    assert exported["kitrading_rpc_latency_seconds_bucket"] == {"service", "method", "le"}
    assert {"service", "method"} <= exported["kitrading_rpc_streams_open"]
    assert "kitrading_llm_tokens_total" in exported and "kitrading_training_job_progress_ratio" in exported
    assert "process_resident_memory_bytes" in exported


def test_every_queried_metric_is_exported(exported: dict[str, set[str]]) -> None:
    known = set(exported) | PROMETHEUS_SERIES
    missing = [f"{where}: {name}" for where, expr in queries() for name in sorted(metric_names(expr) - known)]
    missing += [f"{where}: {metric}" for where, metric, _label in variable_metrics() if metric not in known]
    assert not missing, "queried but exported by no service:\n" + "\n".join(missing)
    used = {name for _where, expr in queries() for name in metric_names(expr)}
    assert len(used) >= 20, sorted(used)  # the parser finds the names (an empty set would pass the check)


def test_every_matched_label_is_on_its_metric(exported: dict[str, set[str]]) -> None:
    wrong = []
    for where, expr in queries():
        for metric, label in matched_labels(expr):
            if metric in PROMETHEUS_SERIES or not metric:
                continue
            if label not in exported.get(metric, set()) | TARGET_LABELS:
                wrong.append(f"{where}: {metric} has no label {label!r}")
    for where, metric, label in variable_metrics():
        if label not in exported.get(metric, set()) | TARGET_LABELS:
            wrong.append(f"{where}: {metric} has no label {label!r}")
    assert not wrong, "\n".join(wrong)


def test_every_metric_the_issue_asks_for_has_a_panel() -> None:
    """Request rate, errors, latency percentiles, streams, training jobs and progress, GPU utilisation
    and memory, LLM tokens/s and queue depth (issue 21)."""
    used = {name for _where, expr in queries() for name in metric_names(expr)}
    for name in (
        "kitrading_rpc_requests_total",
        "kitrading_rpc_errors_total",
        "kitrading_rpc_latency_seconds_bucket",
        "kitrading_rpc_streams_open",
        "kitrading_training_jobs_active",
        "kitrading_training_job_progress_ratio",
        "kitrading_gpu_utilization_percent",
        "kitrading_gpu_memory_used_bytes",
        "kitrading_gpu_memory_budget_bytes",
        "kitrading_llm_tokens_total",
        "kitrading_llm_queue_depth",
    ):
        assert name in used, name
    percentiles = {
        q
        for _w, expr in queries()
        for q in re.findall(r"histogram_quantile\(([\d.]+), .*rpc_latency_seconds_bucket", expr)
    }
    assert {"0.5", "0.95", "0.99"} <= percentiles


# ---- a real running service, scraped -------------------------------------------------------------


class _Engine:
    """An engine that answers at once, for a real LLM service with nothing heavy behind it."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def info(self) -> Any:
        from services.llm.engine import EngineInfo

        return EngineInfo(engine="fake", model="fake", loaded=True)

    async def refresh(self) -> Any:
        return self.info()

    async def stream(self, messages: Sequence[Any], **_: Any) -> Any:
        from services.llm.engine import Token

        for index, text in enumerate(["Hold", " for", " now."]):
            yield Token(text, index, finish_reason="stop" if index == 2 else None)


async def test_a_running_service_serves_every_queried_metric() -> None:
    """The LLM service on the real runtime (port 0) after an RPC and an answer: its /metrics, read
    over HTTP from the runtime's metrics server code, names every metric the dashboards and alerts
    query (HELP/TYPE lines come for every registered family, samples for the ones in use)."""
    import grpc.aio
    from prometheus_client import start_http_server
    from prometheus_client.parser import text_string_to_metric_families

    import services.training.jobs  # noqa: F401  (the training gauges, as in every training service)
    from kitrading.llm.v1 import request_response_pb2 as llm_rr
    from kitrading.llm.v1 import service_pb2_grpc as llm_grpc
    from services.llm.app import LlmApp
    from services.llm.grounding_settings import GroundingSettings
    from services.llm.settings import LlmSettings
    from services.runtime.metrics import REGISTRY
    from tests.grpc_helpers import start_server

    nowhere = "127.0.0.1:9"  # discard port: every grounding source is down, which the status call ignores
    grounding = GroundingSettings(
        targets={n: nowhere for n in ("data", "forecast", "regime", "pattern", "rag")}, timeout_seconds=0.5
    )
    app = LlmApp(LlmSettings.from_env({}), grounding, engine=_Engine())
    server = await start_server(app, "llm")
    http, thread = start_http_server(0, addr="127.0.0.1", registry=REGISTRY)
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            await llm_grpc.LlmServiceStub(channel).GetLlmStatus(llm_rr.GetLlmStatusRequest())
        async for _token in app.analyst.generate([{"role": "user", "content": "?"}], max_tokens=8):
            pass
        port = http.server_port
        text = await _fetch(f"http://127.0.0.1:{port}/metrics")
    finally:
        http.shutdown()
        thread.join(timeout=5)
        await server.stop(0)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    served = {n for f in families.values() for n in sample_names(f.name, f.type)}
    missing = sorted(
        {name for _where, expr in queries() for name in metric_names(expr)} - served - PROMETHEUS_SERIES
    )
    assert not missing, f"not on a running service's /metrics: {missing}"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    status = ("method", "/kitrading.llm.v1.LlmService/GetLlmStatus")
    ok = ("kitrading_rpc_requests_total", (("code", "OK"), status, ("service", "llm")))
    assert samples[ok] >= 1
    assert samples[("kitrading_llm_tokens_total", ())] >= 3
    assert samples[("kitrading_llm_queue_capacity", ())] == app.settings.max_queued
    assert samples[("kitrading_llm_queue_depth", ())] == 0


async def _fetch(url: str) -> str:
    import asyncio

    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    return await asyncio.to_thread(get)


# ---- the generated files -------------------------------------------------------------------------


def test_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    generator = load_generator()
    rendered = generator.render()
    for name, text in rendered.items():
        assert (OBSERVABILITY / name).read_text(encoding="utf-8") == text, (
            f"run python deploy/observability/generate.py ({name})"
        )
    written = {
        str(p.relative_to(OBSERVABILITY))
        for p in OBSERVABILITY.rglob("*")
        if p.is_file() and p.suffix != ".py"
    }
    written = {p for p in written if "__pycache__" not in p}
    assert written == set(rendered), "a file under deploy/observability that the generator does not write"
    assert generator.main(["--check"]) == 0
    assert generator.main(["--check", "--out", str(tmp_path)]) == 1


def test_prometheus_scrapes_every_service_on_its_metrics_port() -> None:
    config = yaml.safe_load((OBSERVABILITY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {s.name for s in SERVICES}
    for info in SERVICES:
        job = jobs[info.name]
        (dns,) = job["dns_sd_configs"]
        assert dns == {"names": [info.name], "type": "A", "port": info.metrics_port({})}
        assert {"target_label": "service", "replacement": info.name} in job["relabel_configs"]
        assert job["honor_labels"] is True
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_alert_rules_cover_down_errors_and_gpu_budget() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    down = {rule["labels"]["service"] for rule in rules if rule["alert"] == "KitradingServiceDown"}
    assert down == {s.name for s in SERVICES}
    assert {"KitradingServiceNotServing", "KitradingHighErrorRate", "KitradingGpuMemoryNearBudget"} <= set(
        names
    )
    for rule in rules:
        assert rule["for"] and rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    generator = load_generator()
    sources = yaml.safe_load(
        (OBSERVABILITY / "grafana/provisioning/datasources/kitrading.yml").read_text(encoding="utf-8")
    )["datasources"]
    prometheus = next(s for s in sources if s["type"] == "prometheus")
    assert prometheus["url"] == "http://prometheus:9090" and prometheus["isDefault"] is True
    provider = yaml.safe_load(
        (OBSERVABILITY / "grafana/provisioning/dashboards/kitrading.yml").read_text(encoding="utf-8")
    )["providers"][0]
    assert provider["options"]["path"] == generator.GRAFANA_DASHBOARDS_DIR
    uids = set()
    for name, dashboard in dashboards().items():
        assert name == f"{dashboard['uid']}.json"
        uids.add(dashboard["uid"])
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']}"
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == prometheus["uid"], f"{name}: {panel['title']}"
                assert panel["targets"] and panel["description"], f"{name}: {panel['title']}"
    assert len(uids) == len(dashboards()) >= 3


# ---- promtool: Prometheus's own parser and rule tests ----------------------------------------------


def _promtool() -> str:
    found = os.environ.get("KITRADING_PROMTOOL") or shutil.which("promtool")
    cache = (
        Path(os.environ.get("KITRADING_CACHE", Path.home() / ".cache" / "kitrading")) / "promtool/promtool"
    )
    if found is None and cache.is_file():
        found = str(cache)
    if found is None:
        pytest.skip("promtool not installed (bash deploy/promtool.sh fetches it; make test does)")
    return found


def _run(*args: str, cwd: Path) -> None:
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    promtool = _promtool()
    shutil.copy(OBSERVABILITY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    config = (OBSERVABILITY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/alerts.yml", "alerts.yml"))
    _run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    _run(promtool, "check", "rules", "alerts.yml", cwd=tmp_path)


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query, Grafana's variables replaced by values, as a recording rule: promtool parses it."""
    promtool = _promtool()
    rules = []
    for index, (where, expr) in enumerate(queries()):
        if where.startswith("alert "):
            continue
        concrete = expr.replace("$__rate_interval", "1m").replace("$service", "data|llm")
        rules.append({"record": f"kitrading:dashboard_query_{index}", "expr": concrete})
    assert len(rules) > 20
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
    _run(promtool, "check", "rules", "queries.yml", cwd=tmp_path)


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    body = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def test_promtool_unit_tests_of_the_alerts(tmp_path: Path) -> None:
    """Synthetic series through the real rules: each alert fires exactly where it should."""
    promtool = _promtool()
    data = yaml.safe_load((OBSERVABILITY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")  # templates are checked by `check rules`; here: exprs, for, labels
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(data))

    def target(service: str, port: int) -> dict[str, str]:
        return {"instance": f"10.0.0.{port % 100}:{port}", "job": service, "service": service}

    up = [
        _series("up", target(s.name, s.default_port + 6000), "0x20" if s.name == "data" else "1x20")
        for s in SERVICES
        if s.name != "forecast"  # gone from DNS: no `up` at all
    ]
    rag = target("rag", 9008)
    method = "/kitrading.rag.v1.RagService/QueryKnowledgeBase"
    errors = [  # rag: 50 OK and 10 INTERNAL per minute (requests count every code): 1/6 fail
        _series("kitrading_rpc_requests_total", {**rag, "method": method, "code": "OK"}, "0+12.5x40"),
        _series("kitrading_rpc_requests_total", {**rag, "method": method, "code": "INTERNAL"}, "0+2.5x40"),
        _series("kitrading_rpc_errors_total", {**rag, "method": method, "code": "INTERNAL"}, "0+2.5x40"),
        # data: only a caller's mistakes (NOT_FOUND): no alert
        _series(
            "kitrading_rpc_requests_total",
            {**target("data", 9001), "method": "m", "code": "NOT_FOUND"},
            "0+30x40",
        ),
        _series(
            "kitrading_rpc_errors_total",
            {**target("data", 9001), "method": "m", "code": "NOT_FOUND"},
            "0+30x40",
        ),
    ]
    gpu = {**target("embedder", 9005), "source": "torch", "device": "0"}
    llm_gpu = {**target("llm", 9009), "source": "ollama", "device": "0"}
    memory = [
        _series("kitrading_gpu_memory_used_bytes", gpu, "950x40"),
        _series("kitrading_gpu_memory_budget_bytes", gpu, "1000x40"),
        _series("kitrading_gpu_memory_used_bytes", llm_gpu, "500x40"),
        _series("kitrading_gpu_memory_budget_bytes", llm_gpu, "1000x40"),
    ]
    serving = [
        _series("kitrading_service_serving", target("regime", 9004), "0x20"),
        _series("kitrading_service_serving", target("pattern", 9003), "1x20"),
    ]
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": up + errors + memory + serving,
                "alert_rule_test": [
                    {"eval_time": "30s", "alertname": "KitradingServiceDown", "exp_alerts": []},
                    {
                        "eval_time": "2m",
                        "alertname": "KitradingServiceDown",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "critical", "service": "data"}},
                            {"exp_labels": {"severity": "critical", "service": "forecast"}},
                        ],
                    },
                    {
                        "eval_time": "3m",
                        "alertname": "KitradingServiceNotServing",
                        "exp_alerts": [{"exp_labels": {**target("regime", 9004), "severity": "warning"}}],
                    },
                    {"eval_time": "4m", "alertname": "KitradingHighErrorRate", "exp_alerts": []},
                    {
                        "eval_time": "9m",
                        "alertname": "KitradingHighErrorRate",
                        "exp_alerts": [{"exp_labels": {"service": "rag", "severity": "warning"}}],
                    },
                    {
                        "eval_time": "6m",
                        "alertname": "KitradingGpuMemoryNearBudget",
                        "exp_alerts": [{"exp_labels": {**gpu, "severity": "warning"}}],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    _run(promtool, "test", "rules", "tests.yml", cwd=tmp_path)
