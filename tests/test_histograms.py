"""The lean histogram behind the per-call metrics reads exactly as prometheus-client's own `Histogram` would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mcpstore_proxy.histograms import LabelledHistogram

BUCKETS = (0.01, 0.1, 1, 10)
OBSERVED = [("a", 0.005), ("a", 0.01), ("a", 0.5), ("b", 10.0), ("a", 99.0), ("b", 0.1)]


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_its_buckets_counts_and_sums_match_prometheus_clients_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    lean = LabelledHistogram("duration_seconds", "How long.", ["kind"], BUCKETS)
    ours.register(lean)
    reference = Histogram("duration_seconds", "How long.", ["kind"], registry=theirs, buckets=BUCKETS)
    for kind, seconds in OBSERVED:
        lean.observe((kind,), seconds)
        reference.labels(kind).observe(seconds)

    assert samples(ours) == samples(theirs)
    assert samples(ours)[("duration_seconds_bucket", frozenset({("kind", "a"), ("le", "0.01")}))] == 2  # inclusive


def test_it_refuses_label_values_that_do_not_fit_its_label_names() -> None:
    lean = LabelledHistogram("duration_seconds", "How long.", ["kind", "outcome"], BUCKETS)

    with pytest.raises(ValueError, match=r"takes 2 label values, not \('a',\)"):
        lean.observe(("a",), 1.0)

    lean.observe(("a", "ok"), 1.0)
    assert len(lean) == 1
