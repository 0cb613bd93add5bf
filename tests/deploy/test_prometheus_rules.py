"""deploy/prometheus: the rules pass promtool's checks and unit tests, and name real metrics.

`promtool check rules`, `promtool test rules graphgate-rules.test.yml` and
`promtool check config prometheus.example.yml` run for real (promtool comes with the
`prometheus` Debian package; `make test` installs it). The metric names in every rule
are checked against what `Metrics` really exports, so renaming a metric breaks this test
instead of silently emptying an alert.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import (
    EXAMPLE_CONFIG,
    PROMETHEUS_DIR,
    PROMETHEUS_SERIES,
    RULES,
    RULES_TESTS,
    all_rules,
    exported_names,
    load_rules,
    metric_names,
    promtool,
    recording_rule_names,
)

ALERTS = {
    "GraphgateHigh5xxRatio",
    "GraphgateSlowFirstToken",
    "GraphgatePoolSaturated",
    "GraphgateStreamErrorSpike",
    "GraphgateAuthFailureSpike",
    "GraphgateTargetDown",
}
TOKEN_BLOCK = """\
    # authorization:
    #   type: Bearer
    #   credentials_file: /etc/prometheus/secrets/graphgate-metrics-token
"""


def _run(*args: str | Path, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run([promtool(), *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in all_rules() if "alert" in rule}


def test_promtool_check_rules() -> None:
    output = _run("check", "rules", RULES)
    assert f"SUCCESS: {len(all_rules())} rules found" in output


def test_promtool_unit_tests_pass() -> None:
    output = _run("test", "rules", RULES_TESTS.name)
    assert "SUCCESS" in output and "FAILED" not in output


def test_example_config_is_valid_and_loads_the_rules() -> None:
    output = _run("check", "config", EXAMPLE_CONFIG.name)
    assert "1 rule files found" in output
    assert f"SUCCESS: {len(all_rules())} rules found" in output


def test_example_config_token_block_is_valid_uncommented(tmp_path: Path) -> None:
    """The commented `authorization` block for [metrics] token works once uncommented."""
    text = EXAMPLE_CONFIG.read_text()
    assert TOKEN_BLOCK in text
    token_file = tmp_path / "graphgate-metrics-token"
    token_file.write_text("a-long-random-metrics-token\n")
    uncommented = (TOKEN_BLOCK.replace("# ", "", 1).replace("#   ", "  ")
                   .replace("/etc/prometheus/secrets/graphgate-metrics-token", str(token_file)))
    text = text.replace(TOKEN_BLOCK, uncommented)
    config = yaml.safe_load(text)
    assert config["scrape_configs"][0]["authorization"] == {
        "type": "Bearer", "credentials_file": str(token_file)}
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "prometheus.yml").write_text(text)
    output = _run("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS" in output
    # A missing token file is an error promtool reports: the block is really read.
    token_file.unlink()
    result = subprocess.run([promtool(), "check", "config", "prometheus.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0


def test_example_config_scrapes_the_graphgate_job() -> None:
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "graphgate"
    assert job["metrics_path"] == "/metrics"


def test_every_required_alert_is_defined_with_severity_and_annotations() -> None:
    alerts = _alerts()
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert rule.get("for"), f"{name}: no `for:`, so one bad scrape pages"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        assert 'job="graphgate"' in rule["expr"], f"{name}: not limited to the graphgate job"


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.get("record") or r["alert"])
def test_rules_name_only_exported_metrics(rule: dict[str, Any]) -> None:
    allowed = exported_names() | PROMETHEUS_SERIES | recording_rule_names()
    unknown = metric_names(rule["expr"]) - allowed
    assert not unknown, f"not exported by graphgate: {sorted(unknown)}"


def test_recording_rules_are_defined_before_use() -> None:
    """A group evaluates in order: a rule reading a later one would lag an interval."""
    recorded = recording_rule_names()
    for group in load_rules()["groups"]:
        seen: set[str] = set()
        for rule in group["rules"]:
            used = metric_names(rule["expr"]) & recorded
            if "record" in rule:
                assert used <= seen, f"{rule['record']} reads {sorted(used - seen)} too early"
                seen.add(rule["record"])
        assert all(name.startswith("graphgate:") for name in seen)


def test_unit_tests_cover_every_alert_firing_and_not() -> None:
    tests = yaml.safe_load(RULES_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fired: set[str] = set()
    silent: set[str] = set()
    checked_records: set[str] = set()
    for case in tests["tests"]:
        for alert_test in case.get("alert_rule_test", []):
            (fired if alert_test["exp_alerts"] else silent).add(alert_test["alertname"])
        for expr_test in case.get("promql_expr_test", []):
            checked_records |= metric_names(expr_test["expr"]) & recording_rule_names()
    assert fired == ALERTS
    assert silent, "no test shows an alert staying quiet"
    assert len(checked_records) >= 2
