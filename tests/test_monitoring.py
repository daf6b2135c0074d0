"""Monitoring: the Prometheus config and alert rules (promtool), the Grafana dashboard, and a real
Prometheus scraping a running service; the worker metrics the alerts and panels rely on."""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_server import PrometheusServer, promtool
from serving import GUNICORN, PROJECT_ROOT, RunningService, metric_sum, scrape, service_env, wait_for

from reliability.service import worker_pids

PROMETHEUS_DIR = PROJECT_ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "nli-service.json"
GRAFANA_PROVISIONING = PROJECT_ROOT / "deploy" / "grafana" / "provisioning"

PAIR = {"premise": "A man is playing a guitar.", "hypothesis": "A person plays music."}
SERVICE_METRIC = re.compile(r"\bnli_[a-z0-9_]+")
RECORDED = re.compile(r"\bnli:[a-z0-9_:]+")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": "nli-service", "$instance": ".+"}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def as_prometheus_sees_it(grafana_query: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        grafana_query = grafana_query.replace(variable, value)
    return grafana_query


# -- promtool ------------------------------------------------------------------------------


def test_prometheus_config_and_its_rule_file_pass_promtool_check_config() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_rules_rejects_a_broken_expression(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS.read_text().replace("> 0.05", "> > 0.05", 1))
    result = promtool("check", "rules", broken)
    assert result.returncode != 0 and "parse error" in result.stdout + result.stderr


def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The same unit tests against rules whose 5xx threshold went from 5 % to 50 %: they fail."""
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text().replace("> 0.05", "> 0.5", 1))
    (tmp_path / "alerts.test.yml").write_text(ALERT_TESTS.read_text())
    result = promtool("test", "rules", tmp_path / "alerts.test.yml")
    assert result.returncode != 0
    assert "alertname: NLIHighErrorRate" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts == {
        "NLIHighErrorRate",
        "NLILatencyBudgetFastBurn",
        "NLILatencyBudgetSlowBurn",
        "NLIRequestTimeouts",
        "NLINoReadyReplica",
        "NLIFallbackModelServed",
        "NLIWorkerRestarts",
    }
    assert alerts - fires == set() and alerts - quiet == set()


# -- the dashboard -----------------------------------------------------------------------


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each panel query (Grafana's variables filled in) as a recording rule: promtool parses them all."""
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{number}", "expr": as_prometheus_sees_it(query)}
        for number, query in enumerate(queries)
    ]}]}  # fmt: skip
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", tmp_path / "dashboard-rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout + result.stderr


def test_the_dashboard_shows_what_operators_need() -> None:
    panels = dashboard_panels()
    assert all(panel["targets"] and panel["datasource"]["uid"] == "${datasource}" for panel in panels)
    assert len({panel["id"] for panel in panels}) == len(panels)
    used = {name for query in dashboard_queries() for name in SERVICE_METRIC.findall(query)}
    needed = {
        "nli_pairs_total",  # pairs/s
        "nli_request_total",  # requests by status, 408s, 429s
        "nli_request_latency_seconds_bucket",  # p50/p95/p99
        "nli_request_timeouts_total",
        "nli_rate_limited_total",
        "nli_batch_pairs_bucket",
        "nli_batch_padded_tokens_bucket",
        "nli_predicted_label_total",  # label mix
        "nli_requests_in_flight",
        "nli_worker_resident_memory_bytes",
        "nli_model_fallback",
        "nli_worker_exits_total",
    }
    assert needed - used == set()


def test_grafana_provisioning_points_at_the_dashboard_and_the_datasource() -> None:
    datasource = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert [source["type"] for source in datasource["datasources"]] == ["prometheus"]
    provider = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "nli-service.yml").read_text())
    assert provider["providers"][0]["type"] == "file" and provider["providers"][0]["options"]["path"]
    variable = json.loads(DASHBOARD.read_text())["templating"]["list"][0]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"


# -- against a running service --------------------------------------------------------------


def post_predict(service: RunningService, pair: dict[str, str] = PAIR, **headers: str) -> int:
    return requests.post(f"{service.url}/predict", json=pair, headers=headers, timeout=10).status_code


@pytest.fixture(scope="module")
def monitored_service(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, module_services) -> Iterator:
    """The tiny model under Gunicorn (2 workers, a rate limit of 2 requests a minute per worker),
    after /predict answered 200, 408 and 429: (service, the statuses /predict answered)."""
    env = service_env(
        NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_RATE_LIMIT="2/minute", NLI_LOG_DIR=tmp_path_factory.mktemp("logs")
    )
    with module_services.running(GUNICORN, env) as service:
        # a pair not asked before: the worker that answered PAIR would answer it again from its cache
        unseen = {"premise": "Two dogs run in the park.", "hypothesis": "The dogs are asleep."}
        statuses = [post_predict(service), post_predict(service, unseen, **{"X-Request-Timeout": "0.001"})]
        while 429 not in statuses and len(statuses) < 10:  # each worker lets 2 a minute through
            statuses.append(post_predict(service))
        assert statuses[:2] == [200, 408] and statuses[-1] == 429, statuses
        yield service, statuses


def exported_names(metrics_url: str) -> set[str]:
    """Every sample name on the metrics port (``nli_request_total``, ``..._bucket``, ``..._count``...)."""
    text = requests.get(metrics_url, timeout=10).text
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_dashboard_and_alerts_use_only_metrics_the_service_exports(monitored_service) -> None:
    service, _ = monitored_service
    exported = exported_names(service.metrics_url)
    queries = dashboard_queries() + [rule["expr"] for rule in alert_rules()]
    used = {name for query in queries for name in SERVICE_METRIC.findall(query)}
    assert used - exported == set()
    recorded = {rule["record"] for rule in alert_rules() if "record" in rule}
    assert {name for query in queries for name in RECORDED.findall(query)} - recorded == set()


def prometheus_config(metrics_port: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml pointed at a local service, scraping and evaluating every second."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / rule_file) for rule_file in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    return config


@pytest.mark.slow
def test_prometheus_scrapes_the_service_and_evaluates_the_alert_rules(monitored_service, tmp_path: Path) -> None:
    service, statuses = monitored_service
    sent = len(statuses)
    prometheus = PrometheusServer(tmp_path / "prometheus", prometheus_config(service.env["NLI_METRICS_PORT"]))
    prometheus.start()
    try:

        def requests_counted() -> float | None:
            result = prometheus.query('sum(nli_request_total{job="nli-service", endpoint="/predict"})')
            return float(result[0]["value"][1]) if result else None

        wait_for(lambda: requests_counted() == sent, timeout=15, what=f"Prometheus counting {sent} requests")
        more = [post_predict(service) for _ in range(3)]
        wait_for(lambda: requests_counted() == sent + len(more), timeout=10, what="the next 3 requests counted")
        by_status = {
            int(row["metric"]["status"]): float(row["value"][1])
            for row in prometheus.query('sum by (status) (nli_request_total{endpoint="/predict"})')
        }
        assert by_status == Counter(statuses + more)

        wait_for(lambda: prometheus.api("rules")["groups"], timeout=5, what="the rule groups loaded")
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        names = {rule["name"] for rule in rules}
        assert {rule.get("alert") or rule["record"] for rule in alert_rules()} == names
        # every rule has been evaluated against the real series without an error
        wait_for(lambda: all(r["health"] == "ok" for g in prometheus.api("rules")["groups"] for r in g["rules"]),
                 timeout=5, what="every rule evaluated")  # fmt: skip
        firing = {alert["labels"]["alertname"] for alert in prometheus.api("alerts")["alerts"]}
        assert "NLINoReadyReplica" not in firing and "NLIFallbackModelServed" not in firing
        assert prometheus.query('up{job="nli-service"} == 1 and on (instance) nli_workers == 2')
    finally:
        prometheus.stop()


# -- the worker metrics ----------------------------------------------------------------------


def test_workers_memory_and_planned_and_unplanned_exits_are_exported(model_dir: Path, tmp_path: Path, services) -> None:
    """Workers recycled after NLI_MAX_REQUESTS exit as planned; one killed with SIGKILL does not;
    the exporter reports the live workers and the memory of each."""
    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=2, NLI_MAX_REQUESTS=3, NLI_LOG_DIR=tmp_path)
    with services.running(GUNICORN, env) as service:
        master = service.process.pid

        def sample(name: str) -> float:
            return metric_sum(scrape(service.metrics_url), name)

        def exits() -> tuple[float, float]:
            samples = scrape(service.metrics_url)
            return metric_sum(samples, "nli_worker_exits_total"), metric_sum(samples, "nli_worker_planned_exits_total")

        for _ in range(12):  # a worker recycles after its 3rd request
            assert post_predict(service) == 200
            if exits()[0] >= 1:
                break
        # a worker counts its planned exit just before the master counts the exit: wait for both
        wait_for(lambda: exits()[0] >= 1 and exits()[0] == exits()[1], what="the recycled workers counted")
        wait_for(lambda: len(worker_pids(master)) == 2 and sample("nli_workers") == 2, what="2 workers again")
        (exited, planned) = exits()
        assert exited >= 1 and planned == exited

        victim = min(worker_pids(master))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: exits()[0] == exited + 1, what="the killed worker counted")
        wait_for(lambda: len(worker_pids(master)) == 2 and sample("nli_workers") == 2, what="a replacement")
        assert exits()[1] == planned

        samples = scrape(service.metrics_url)
        memory = {
            int(key.split('pid="')[1].split('"')[0]): value
            for key, value in samples.items()
            if key.startswith("nli_worker_resident_memory_bytes{")
        }
        assert set(memory) == worker_pids(master) and victim not in memory
        assert all(value > 50 * 2**20 for value in memory.values())  # torch alone is more


def test_the_dev_server_exports_its_own_memory_beside_the_service_metrics() -> None:
    """Without Gunicorn (``python app.py``) the one process is the worker: its registry plus its memory;
    a process that is gone is left out."""
    from prometheus_client import generate_latest

    import nli_service.metrics  # noqa: F401 - the service's metrics, registered as the app does
    from nli_service.server.metrics_exporter import export_registry

    gone = 2**22 + 1  # above Linux's largest pid
    text = generate_latest(export_registry(lambda: [os.getpid(), gone])).decode()
    samples = {sample.name: sample for family in text_string_to_metric_families(text) for sample in family.samples}
    assert samples["nli_workers"].value == 1
    memory = samples["nli_worker_resident_memory_bytes"]
    assert memory.labels == {"pid": str(os.getpid())} and memory.value > 50 * 2**20
    assert "nli_request_latency_seconds" in text and "nli_pairs_total" in samples
