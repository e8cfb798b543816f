"""Prometheus text scraped from a server's /metrics, by metric name and labels."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str | int) -> Samples:
    """Every sample at http://ADDRESS/metrics (a port alone means 127.0.0.1:PORT)."""
    if isinstance(address, int):
        address = f"127.0.0.1:{address}"
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a counter not yet moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
