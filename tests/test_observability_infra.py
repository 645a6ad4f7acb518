"""Alert rules and the Grafana dashboard name only metrics the code (or Flower) exports; Flower refuses to start
without auth outside the embedded demo; Prometheus scrapes what we serve."""

from __future__ import annotations

import json
import re
from pathlib import Path

import flower
import pytest
import yaml
from click.testing import CliRunner

from tests.helpers import ROOT

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "absent", "histogram_quantile", "by", "without",
    "on", "ignoring", "or", "and", "unless", "avg_over_time", "max_over_time", "bool", "le",
}


def exported() -> set[str]:
    """Every series name our code exports (histograms and counters with their suffixes) and Flower's."""
    from api.metrics import NAMES as API
    from api.ops_metrics import NAMES as DATABASE
    from worker.observability import NAMES as WORKER

    names: set[str] = set(DATABASE)
    for name in (*API, *WORKER):
        names.add(name)
        if not name.endswith("_total"):
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    flower_source = (Path(flower.__file__).parent / "events.py").read_text()
    names |= set(re.findall(r"['\"](flower_[a-z_]+)['\"]", flower_source))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, grouping labels, ranges and strings removed)."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return tokens - PROMQL_WORDS


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    board = json.loads((ROOT / "infra" / "grafana" / "dashboards" / "illustrations.json").read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


def test_the_parser_finds_metric_names() -> None:
    assert metric_names('sum by (le) (rate(x_bucket{a="b"}[5m])) / on() y unless z == 1') == {"x_bucket", "y", "z"}


def test_alert_rules_name_only_exported_metrics() -> None:
    names = exported()
    alerts = dict(alert_expressions())
    assert {"NoInteractiveConsumer", "OldestQueuedJobTooOld", "WorkerSetupFailed", "WebhookBacklog", "RelayLag",
            "ApiErrorRate", "GenerationFailureRate"} <= set(alerts)
    for alert, expr in alerts.items():
        used = metric_names(expr)
        assert used, alert
        assert used <= names, f"{alert} names {sorted(used - names)}, which nothing exports"


def test_dashboard_queries_name_only_exported_metrics() -> None:
    names = exported()
    panels = dashboard_expressions()
    titles = " ".join(title.lower() for title, _ in panels)
    for topic in ("queue depth", "throughput", "p95", "failure rate", "gpu"):
        assert topic in titles, topic
    for title, expr in panels:
        used = metric_names(expr)
        assert used, f"{title} names {sorted(used - names)}, which nothing exports"
        assert used <= names, f"{title} names {sorted(used - names)}, which nothing exports"


def test_prometheus_scrapes_the_api_workers_and_flower() -> None:
    config = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"api", "workers", "flower"}
    assert jobs["api"]["metrics_path"] == "/metrics"
    assert jobs["api"]["authorization"]["type"] == "Bearer"
    assert all(target.endswith(":9100") for target in jobs["workers"]["static_configs"][0]["targets"])


def test_flower_refuses_to_start_without_auth_outside_the_embedded_mode(tmp_path: Path) -> None:
    from cli.serve import flower as flower_command
    from shared.settings import Settings

    configured = Settings(var_dir=tmp_path, broker_url="redis://127.0.0.1:1/0")
    result = CliRunner().invoke(flower_command, [], obj=configured)
    assert result.exit_code != 0
    assert "ILLUSTRATIONS_FLOWER_BASIC_AUTH" in result.output


@pytest.mark.parametrize("name", ["api", "worker-gpu0"])
def test_compose_sets_the_worker_exporter_port(name: str) -> None:
    services = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())["services"]
    env = services[name]["environment"]
    assert env["ILLUSTRATIONS_WORKER_METRICS_PORT"] == "9100"
