"""The Grafana dashboard and the Prometheus alert rules name only metrics eventkit exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from eventkit.infrastructure.metrics import EXPORTED

MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
METRIC = re.compile(r"\beventkit_[a-z_]+")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def family(series: str) -> str:
    for suffix in HISTOGRAM_SERIES:
        if series.endswith(suffix) and series.removesuffix(suffix) in EXPORTED:
            return series.removesuffix(suffix)
    return series


def test_every_dashboard_panel_queries_exported_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana" / "eventkit-dashboard.json").read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
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
    for alert in (
        "EventkitLagHigh",
        "EventkitDeadLetter",
        "EventkitWorkerDown",
        "EventkitStuck",
        "EventkitLatencyHigh",
    ):
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
