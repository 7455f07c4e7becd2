"""A Prometheus histogram cheap enough for every forwarded call.

prometheus-client's `Histogram` takes a lock per value it touches and walks its buckets in Python on every
observation, which cost about 5% of the proxy's CPU per forwarded call. The proxy observes only from its event
loop's thread, so `LabelledHistogram` keeps plain counts per label values (one `bisect` and three additions per
observation) and turns them into Prometheus' cumulative buckets only when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString  # pyright: ignore[reportUnknownVariableType]

__all__ = ["LabelledHistogram"]


class _Series:
    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        """Observations per bucket, not cumulative; the last is +Inf."""
        self.total = 0.0


class LabelledHistogram(Collector):
    """One histogram family: `observe(labels, value)` from one thread, `collect()` when scraped."""

    def __init__(self, name: str, documentation: str, label_names: Sequence[str], buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._label_names = tuple(label_names)
        self._bounds = tuple(float(bound) for bound in buckets)
        self._bucket_names = (*(floatToGoString(bound) for bound in self._bounds), "+Inf")
        self._series: dict[tuple[str, ...], _Series] = {}

    def __repr__(self) -> str:
        return f"<LabelledHistogram {self._name}: {len(self._series)} series>"

    def __len__(self) -> int:
        return len(self._series)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            if len(labels) != len(self._label_names):
                raise ValueError(f"{self._name} takes {len(self._label_names)} label values, not {labels!r}")
            series = self._series[labels] = _Series(len(self._bucket_names))
        series.counts[bisect_left(self._bounds, value)] += 1  # a bucket counts values up to its bound, inclusive
        series.total += value

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._label_names)
        for labels, series in list(self._series.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for name, count in zip(self._bucket_names, series.counts, strict=True):
                cumulative += count
                buckets.append((name, cumulative))
            family.add_metric(labels, buckets, series.total)
        yield family
