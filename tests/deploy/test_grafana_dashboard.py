"""deploy/grafana: the dashboard is valid, complete, and queries only real series.

Every PromQL query must name metrics that `Metrics` exports, `up`, or recording rules
defined in deploy/prometheus/graphgate-rules.yml, so a renamed metric or rule fails here
rather than leaving an empty panel. With promtool installed, every query is also parsed
by Prometheus itself (as a throwaway recording rule, after filling in the variables).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import (
    DASHBOARD,
    GRAFANA_DIR,
    PROMETHEUS_SERIES,
    all_rules,
    exported_names,
    metric_names,
    promtool,
    recording_rule_names,
)

# What the issue asks the dashboard to show: some panel's query names each of these.
REQUIRED_TOPICS = (
    "http_requests", "http_request_duration", "streams_open", "stream_first_token",
    "streams_total", "run_duration", "node_duration", "db_pool_connections",
    "auth_failures", "rate_limited",
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def _graph_panels() -> list[dict[str, Any]]:
    return [panel for panel in _panels(_dashboard()) if panel["type"] != "row"]


def _exprs() -> list[str]:
    return [target["expr"] for panel in _graph_panels() for target in panel["targets"]]


def _variables() -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in _dashboard()["templating"]["list"]}


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def _allowed() -> frozenset[str]:
    return exported_names() | PROMETHEUS_SERIES | recording_rule_names()


def test_dashboard_is_valid_json_for_a_current_grafana() -> None:
    dashboard = _dashboard()
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None  # importable anywhere, never tied to one instance
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_every_panel_has_a_title_targets_and_a_unit() -> None:
    panels = _graph_panels()
    assert len(panels) >= 10
    for panel in panels:
        assert panel.get("title"), panel
        assert panel.get("targets"), f"{panel['title']}: no queries"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["refId"], panel["title"]
    titles = [panel["title"] for panel in panels]
    assert len(titles) == len(set(titles)), "panel titles repeat"


def test_datasource_and_filter_variables() -> None:
    variables = _variables()
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} & set(variables)
    for panel in _graph_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for name in ("job", "instance"):
        if name in variables:
            assert variables[name]["datasource"] == DATASOURCE


def test_variable_queries_name_only_exported_metrics() -> None:
    for name, variable in _variables().items():
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", _variable_query(variable))
        assert match, f"${name}: expected label_values(<selector>, <label>)"
        assert metric_names(match.group(1)) <= exported_names(), name


def test_every_query_filters_on_the_variables() -> None:
    """A query without the job filter would mix in other jobs' series."""
    for expr in _exprs():
        assert 'job=~"$job"' in expr, expr


@pytest.mark.parametrize("expr", _exprs())
def test_queries_name_only_exported_metrics_or_recording_rules(expr: str) -> None:
    names = metric_names(expr)
    assert names, f"no metric in {expr}"
    unknown = names - _allowed()
    assert not unknown, f"neither exported nor recorded: {sorted(unknown)} in {expr}"


@pytest.mark.parametrize("topic", REQUIRED_TOPICS)
def test_dashboard_covers_the_required_topics(topic: str) -> None:
    assert any(topic in expr for expr in _exprs()), f"no panel queries {topic}"


def test_alert_runbooks_name_real_panels() -> None:
    """Runbooks send the reader to "<panel>" on the dashboard: that panel must exist."""
    titles = {panel["title"] for panel in _graph_panels()}
    for rule in all_rules():
        if "alert" in rule:
            for quoted in re.findall(r'"([^"]+)"', rule["annotations"]["runbook"]):
                assert quoted in titles, f"{rule['alert']}: no panel {quoted!r}"


def test_prometheus_parses_every_query(tmp_path: Path) -> None:
    """promtool parses each query (variables filled in) as a throwaway recording rule."""
    exprs = _exprs()
    rules = [{"record": f"dashboard:query_{index}:check", "expr": _fill_variables(expr)}
             for index, expr in enumerate(exprs)]
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(rules_file)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def _fill_variables(expr: str) -> str:
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", "graphgate", expr)


def test_readme_explains_import_and_the_expected_rules() -> None:
    readme = (GRAFANA_DIR / "README.md").read_text()
    assert "graphgate-dashboard.json" in readme
    assert "provisioning" in readme.lower()
    assert "graphgate-rules.yml" in readme
    used = {name for expr in _exprs() for name in metric_names(expr)} & recording_rule_names()
    for name in used:
        assert name in readme, f"README does not mention the recording rule {name}"
    for panel in _graph_panels():
        assert panel["title"] in readme, f"README does not describe {panel['title']!r}"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le, route) (rate(a_bucket{job=~"$job", route!="x"}[$__rate_interval]))',
         {"a_bucket"}),
        ("sum(a) by (le) / on (job) group_left (instance) b offset 5m", {"a", "b"}),
        ("histogram_quantile(0.95, sum without (instance) (c:d:rate5m))", {"c:d:rate5m"}),
        ('{__name__="e_total", job="x"} > bool 1e3 and f unless g[5m:1m] or vector(0)',
         {"e_total", "f", "g"}),
        ('label_replace(h, "dst", "$1", "src", "(.*)") * Inf + NaN', {"h"}),
        ("max_over_time(i[1h30m]) @ start() - count_values(\"v\", j)", {"i", "j"}),
    ],
)
def test_the_metric_name_reader(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
