"""Prometheus metrics through `prometheus_client`: request counts and latency per route template.

Request latency is bucketed per route template (`/products/{product_id}/similar`), never per
raw path, so an id-scanning client cannot blow up the number of series. Each app has its own
registry (tests run several apps in one process; the library's global registry would mix
them). One process serves (see `shopclip serve --help`), so no multiprocess mode is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

# A gauge read at scrape time: its help text and (labels, value) samples.
GaugeSamples = tuple[str, list[tuple[dict[str, str], float]]]
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class _ScrapeGauges:
    """A collector over a callable, so index sizes and the like are read when scraped, not tracked."""

    def __init__(self, source: Callable[[], dict[str, GaugeSamples]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, samples) in self.source().items():
            names = sorted({k for labels, _ in samples for k in labels})
            family = GaugeMetricFamily(name, help_text, labels=names)
            for labels, value in samples:
                family.add_metric([labels.get(k, "") for k in names], float(value))
            yield family


class Metrics:
    """The server's counters and histograms; `render` adds gauges read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = time.time()
        self.requests = Counter("shopclip_http_requests", "HTTP requests by method, route template and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("shopclip_http_request_duration_seconds", "Request latency, server side.",
                                 ["method", "route"], buckets=BUCKETS, registry=self.registry)
        self.writes = Counter("shopclip_catalog_writes", "Acknowledged catalog updates.", ["op"],
                              registry=self.registry)
        for op in ("upsert", "delete"):
            self.writes.labels(op=op)  # both series exist from the start, at 0
        self.text_batch = Histogram("shopclip_text_query_batch_size",
                                    "Text queries embedded together in one tower call (micro-batching).",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        uptime = Gauge("shopclip_uptime_seconds", "Seconds since the app was created.", registry=self.registry)
        uptime.set_function(lambda: time.time() - self.started)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def count_write(self, op: str) -> None:
        self.writes.labels(op=op).inc()

    def observe_batch(self, size: int) -> None:
        self.text_batch.observe(size)

    def render(self, gauges: Callable[[], dict[str, GaugeSamples]] | None = None) -> str:
        """The exposition text; `gauges()` maps each gauge name to (help text, samples)."""
        out = generate_latest(self.registry)
        if gauges is not None:
            out += generate_latest(_ScrapeGauges(gauges))  # type: ignore[arg-type]
        return out.decode("utf-8")
