"""Metrics: a few figures read back from the demo's own Prometheus endpoint."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families


def print_metrics(base: str) -> None:
    """Print events appended, retries, dead letters, per-view counts and p99, and /readyz."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    processed: defaultdict[str, float] = defaultdict(float)
    latency: dict[str, dict[float, float]] = defaultdict(dict)
    figures: defaultdict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "eventkit_events_processed_total":
                processed[labels["consumer"]] += sample.value
            elif sample.name == "eventkit_commit_to_processed_seconds_bucket":
                latency[labels["consumer"]][float(labels["le"])] = sample.value
            elif sample.name in {
                "eventkit_events_appended_total",
                "eventkit_retries_total",
                "eventkit_dead_letters_parked_total",
            }:
                figures[sample.name] += sample.value
    print(f"\nread back from {base}/metrics:")
    print(
        f"  events appended {figures['eventkit_events_appended_total']:,.0f}; retries "
        f"{figures['eventkit_retries_total']:,.0f}; dead letters parked "
        f"{figures['eventkit_dead_letters_parked_total']:,.0f}"
    )
    for name, count in sorted(processed.items()):
        print(
            f"  {name}: {count:,.0f} events processed; commit-to-processed p99 "
            f"<= {_p99_bound(latency.get(name, {}))}"
        )
    with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
        print(f"  /readyz: {response.status} {response.read().decode().strip()}")


def _p99_bound(buckets: dict[float, float]) -> str:
    """The upper bound of the histogram bucket that holds the 99th percentile."""
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return "-"
    for bound in sorted(buckets):
        if buckets[bound] >= 0.99 * total:
            return "inf" if bound == float("inf") else f"{bound * 1000:g} ms"
    return "-"
