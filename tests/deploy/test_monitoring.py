"""The Grafana dashboard and the alert rules: valid PromQL over metrics the runtime really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import runtime.observability  # noqa: F401  (registers the metrics)
from tests.deploy.layout import DEPLOY, require_tool, run

MONITORING = DEPLOY / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yaml"
CHECKPOINT = "meshconnect_last_checkpoint_timestamp_seconds"
METRIC_NAME = re.compile(r"\bmeshconnect_[a-z0-9_]+")
# Grafana's variables, replaced by values Prometheus accepts so the expressions can be checked.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$connector": ".*", "$name": ".*"}

SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
}


def exported_series_names() -> set[str]:
    """Every series name the runtime's Prometheus registry can expose, from the metric families' types."""
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("meshconnect_"):
            names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)))
    return names


def panel_expressions(dashboard: dict[str, Any]) -> list[str]:
    expressions = []
    for panel in dashboard["panels"]:
        expressions.extend(target["expr"] for target in panel.get("targets", []))
        expressions.extend(expr for child in panel.get("panels", []) for expr in (t["expr"] for t in child.get("targets", [])))
    return expressions


def template_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"])
    return queries


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_the_runtime_exports_the_documented_metrics() -> None:
    documented = {
        "meshconnect_records_in_total", "meshconnect_records_out_total", "meshconnect_bytes_out_total",
        "meshconnect_errors_total", "meshconnect_retries_total", "meshconnect_dead_letters_total",
        "meshconnect_dead_letters_dropped_total", "meshconnect_batch_latency_seconds_bucket",
        "meshconnect_in_flight", "meshconnect_offset_lag",
        "meshconnect_lease_held", "meshconnect_takeovers_total", "meshconnect_ready",
        "meshconnect_last_checkpoint_timestamp_seconds",
    }  # fmt: skip
    assert documented <= exported_series_names()


def test_dashboard_and_alerts_name_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_series_names()
    for expression in [*panel_expressions(dashboard), *template_queries(dashboard), *alert_expressions()]:
        unknown = set(METRIC_NAME.findall(expression)) - exported
        assert not unknown, f"{sorted(unknown)} in {expression!r} is not a metric the runtime exports"


def test_dashboard_shows_what_operators_need(dashboard: dict[str, Any]) -> None:
    shown = {name for expression in panel_expressions(dashboard) for name in METRIC_NAME.findall(expression)}
    needed = {
        "meshconnect_records_in_total", "meshconnect_records_out_total", "meshconnect_batch_latency_seconds_bucket",
        "meshconnect_retries_total", "meshconnect_dead_letters_total", "meshconnect_lease_held",
        "meshconnect_takeovers_total", "meshconnect_offset_lag",
        # snapshots (mysql-source), cdc apply (mysql-sink), http-source's refusals
        "meshconnect_snapshot_rows_done", "meshconnect_snapshot_rows_total", "meshconnect_cdc_late_resets_total",
        "meshconnect_cdc_ddl_skipped_total", "meshconnect_refused_total",
        # how far sources read behind their systems, how old events are when sinks write them
        "meshconnect_source_lag_seconds", "meshconnect_source_bytes_behind", "meshconnect_event_age_at_write_seconds_bucket",
    }  # fmt: skip
    assert needed <= shown
    assert any(re.search(r"\bup\{", expression) for expression in panel_expressions(dashboard)), "no panel shows scrape health"


def test_every_aggregation_keeps_the_connector_and_name_labels(dashboard: dict[str, Any]) -> None:
    """Every meshconnect metric carries ``connector`` and ``name`` (README): panels and alerts group by both."""
    for expression in [*panel_expressions(dashboard), *alert_expressions()]:
        if not METRIC_NAME.search(expression):
            continue
        for grouping in re.findall(r"\bby \(([^)]*)\)", expression):
            labels = {label.strip() for label in grouping.split(",")}
            assert {"connector", "name"} <= labels, f"by ({grouping}) in {expression!r}"
        for selector in re.findall(r"\bmeshconnect_[a-z0-9_]+\{([^}]*)\}", expression):
            if "$name" in selector:
                assert "$connector" in selector, f"{{{selector}}} in {expression!r} filters by name, not by connector"


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "connector", "name"} <= variables
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()


def test_dashboard_promql_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each expression, written as a recording rule with Grafana's variables filled in."""
    rules = []
    for index, expression in enumerate(panel_expressions(dashboard)):
        filled = expression
        for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
            filled = filled.replace(variable, value)
        rules.append({"record": f"dashboard:panel_{index}", "expr": filled})
    rule_file = tmp_path / "dashboard-rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run([require_tool("promtool"), "check", "rules", str(rule_file)])


def test_promql_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    rule_file = tmp_path / "broken.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r", "expr": "sum by (x (up)"}]}]}))
    with pytest.raises(AssertionError):
        run([require_tool("promtool"), "check", "rules", str(rule_file)])


def test_alert_rules_are_valid() -> None:
    run([require_tool("promtool"), "check", "rules", str(ALERTS)])


def test_alerts_fire_on_what_they_name() -> None:
    """promtool's unit tests: stalled connector, dead letters, lease unheld/lost, stale checkpoint, not ready, retrying."""
    run([require_tool("promtool"), "test", "rules", "alerts.test.yaml"], cwd=MONITORING)


def alert_names() -> set[str]:
    return {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}


def test_required_alerts_exist() -> None:
    assert {
        "MeshconnectConnectorStalled",
        "MeshconnectDeadLettersGrowing",
        "MeshconnectLeaseUnheld",
        "MeshconnectLeaseLost",
        "MeshconnectTargetDown",
    } <= alert_names()


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    unit_tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
    cases = [case for test in unit_tests for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert alert_names() - fired == set(), "alerts no promtool test sees firing"
    assert alert_names() - quiet == set(), "alerts no promtool test sees staying quiet"


def test_since_last_checkpoint_shows_sources_and_leaves_out_sinks(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """A sink exports 0 (it never checkpoints an offset): time() - 0 would read as 56 years."""
    (panel,) = [panel for panel in dashboard["panels"] if panel["title"] == "Since last checkpoint"]
    (target,) = panel["targets"]
    expression = target["expr"].replace("$connector", ".*").replace("$name", ".*")
    assert CHECKPOINT in expression
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # a source that checkpointed at unix time 300 (promtool's clock starts at 0)
                    {"series": f'{CHECKPOINT}{{connector="file-source", name="logs", pod="a"}}', "values": "300x20"},
                    {"series": f'{CHECKPOINT}{{connector="file-sink", name="out", pod="a"}}', "values": "0x20"},
                ],
                "promql_expr_test": [
                    {
                        "expr": expression,
                        "eval_time": "10m",
                        "exp_samples": [{"labels": '{connector="file-source", name="logs"}', "value": 300}],
                    }
                ],
            }
        ],
    }  # fmt: skip
    test_file = tmp_path / "checkpoint.test.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    run([require_tool("promtool"), "test", "rules", str(test_file)])
