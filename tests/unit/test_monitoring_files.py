"""The Grafana dashboard and the Prometheus alert rules name only metrics eventkit exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from eventkit.infrastructure.metrics import EXPORTED, LATENCY_BUCKETS

MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
METRIC = re.compile(r"\beventkit_[a-z_]+")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
ROOT = MONITORING.parents[1]
ALERTS = (
    "EventkitLagHigh",
    "EventkitConsumerNotRunning",
    "EventkitLagUnknown",
    "EventkitNotScraped",
    "EventkitDatabaseDown",
    "EventkitDeadLetter",
    "EventkitReactionBacklog",
    "EventkitWorkerDown",
    "EventkitLoopStalled",
    "EventkitStuck",
    "EventkitLatencyHigh",
)
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="no promtool binary (the prometheus package brings it; .ci/run installs it)",
)


def family(series: str) -> str:
    for suffix in HISTOGRAM_SERIES:
        if series.endswith(suffix) and series.removesuffix(suffix) in EXPORTED:
            return series.removesuffix(suffix)
    return series


def graphs(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_the_dashboard_sums_lag_over_partitions_and_shows_what_operators_need() -> None:
    dashboard = json.loads((MONITORING / "grafana" / "eventkit-dashboard.json").read_text())
    panels = {p["title"]: p for p in graphs(dashboard)}
    lag = panels["Lag in events"]["targets"][0]["expr"]
    # Each partition's lag (the max over the processes reporting it), summed per consumer.
    assert lag.startswith("sum by (kind, consumer) (max by (kind, consumer, partition) ("), lag
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert len(rows) >= 4, rows
    for panel in panels.values():
        assert len(panel.get("description", "")) > 20, f"{panel['title']}: no description"
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels.values()}
    for metric, what in (
        ("eventkit_ready", "readiness"),
        ("eventkit_loop_heartbeat_timestamp_seconds", "heartbeat age"),
        ("eventkit_reaction_queue_messages", "reaction queue depth"),
        ("eventkit_reaction_oldest_message_age_seconds", "oldest reaction message"),
        ("eventkit_consumer_running", "consumers no worker runs"),
    ):
        assert any(metric in e for e in exprs.values()), f"no {what} panel"
    per_partition = [
        t for t, e in exprs.items() if "by (kind, consumer, partition) (eventkit_lag" in e
    ]
    assert len(per_partition) >= 2, per_partition
    for title in ("Lag in events", "Lag in seconds", "Oldest reaction message", "Readiness"):
        assert panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"], title
    # The latency histogram resolves a consumer minutes behind, not only up to 10 s.
    assert max(LATENCY_BUCKETS) >= 300


def test_every_dashboard_panel_queries_exported_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana" / "eventkit-dashboard.json").read_text())
    assert dashboard["panels"]
    for panel in graphs(dashboard):
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = METRIC.findall(target["expr"])
            assert names, f"{panel['title']}: {target['expr']} names no eventkit metric"
            unknown = {family(n) for n in names} - set(EXPORTED)
            assert not unknown, f"{panel['title']}: unknown metric(s) {unknown}"
    for variable in dashboard["templating"]["list"]:
        unknown = {family(n) for n in METRIC.findall(json.dumps(variable))} - set(EXPORTED)
        assert not unknown, variable["name"]


def test_alert_rules_name_exported_metrics_and_cover_the_required_alerts() -> None:
    text = (MONITORING / "prometheus" / "alerts.yml").read_text()
    names = {family(n) for n in METRIC.findall(text)}
    assert names, "the rules name no eventkit metric"
    assert names <= set(EXPORTED), names - set(EXPORTED)
    for alert in ALERTS:
        assert f"alert: {alert}" in text


#: The labels eventkit's metrics carry (infrastructure/metrics.py), and Prometheus's own.
LABELS = {"kind", "consumer", "partition", "event_type", "reason", "error_class", "cause"}
LABELS |= {"outcome", "pool", "state", "le", "instance", "job"}
GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")
TEMPLATE = re.compile(r"\{\{\s*\$?(?:labels\.)?([a-z_]+)\s*\}\}|\$labels\.([a-z_]+)")


def used_labels(text: str) -> set[str]:
    """The labels ``text`` groups or matches by, or prints in a legend or an annotation."""
    found = {label.strip() for group in GROUPING.findall(text) for label in group.split(",")}
    found |= {a or b for a, b in TEMPLATE.findall(text)}
    return found - {"", "value"}  # {{ $value }}: the sample, not a label


def test_queries_and_legends_name_a_consumer_by_its_label() -> None:
    dashboard = (MONITORING / "grafana" / "eventkit-dashboard.json").read_text()
    alerts = (MONITORING / "prometheus" / "alerts.yml").read_text()
    for name, text in (("dashboard", dashboard), ("alert rules", alerts)):
        labels = used_labels(text)
        assert "consumer" in labels, name
        assert labels <= LABELS, f"{name}: unknown label(s) {labels - LABELS}"


def promtool(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.prometheus
@needs_promtool
def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    """alerts.test.yml: lag (also with the only worker frozen), stuck after a restart, dead
    letter, worker down, reaction backlog, no stalled loop after a rebalance, absent series."""
    rules = MONITORING / "prometheus"
    assert f"SUCCESS: {len(ALERTS)} rules found" in promtool(
        "check", "rules", "alerts.yml", cwd=rules
    )
    tests = (rules / "alerts.test.yml").read_text()
    for alert in ALERTS[:-1]:  # every alert but the latency one has a unit test
        assert f"alertname: {alert}" in tests, alert
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml", cwd=rules)


@pytest.mark.prometheus
@needs_promtool
def test_the_scrape_example_of_the_operations_guide_passes_promtool_wherever_saved(
    tmp_path: Path,
) -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    example = next(
        block
        for block in re.findall(r"```yaml\n(.*?)```", guide, re.S)
        if "scrape_configs" in block
    )
    (tmp_path / "prometheus.yml").write_text(example)
    promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    # With the rules copied where the example says, promtool checks them too.
    (tmp_path / "rules").mkdir()
    shutil.copy(
        MONITORING / "prometheus" / "alerts.yml", tmp_path / "rules" / "eventkit-alerts.yml"
    )
    out = promtool("check", "config", str(tmp_path / "prometheus.yml"), cwd=ROOT)
    assert f"SUCCESS: {len(ALERTS)} rules found" in out, out
