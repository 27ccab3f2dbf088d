"""Prometheus text exposition, by hand: a few counters and histograms need no client library.

Request latency is bucketed per route template (`/products/{product_id}/similar`), never per
raw path, so an id-scanning client cannot blow up the number of series.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

# A gauge for `Metrics.render`: its help text and (labels, value) samples, read at scrape time.
Gauge = tuple[str, list[tuple[dict[str, str], float]]]
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class Metrics:
    """Thread-safe counters; `render` adds gauges read at scrape time (index sizes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)  # (method, route, status)
        self.hist: dict[tuple[str, str], list[int]] = {}  # (method, route) -> bucket counts + inf
        self.hist_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.writes: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            key = (method, route)
            counts = self.hist.get(key)
            if counts is None:
                counts = self.hist[key] = [0] * (len(BUCKETS) + 1)
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.hist_sum[key] += seconds

    def count_write(self, op: str) -> None:
        with self._lock:
            self.writes[op] += 1

    def render(self, gauges: Callable[[], dict[str, Gauge]] | None = None) -> str:
        """The exposition text; `gauges()` maps each gauge name to (help text, samples)."""
        lines: list[str] = []
        with self._lock:
            lines += [
                "# HELP shopclip_http_requests_total HTTP requests by method, route template and status.",
                "# TYPE shopclip_http_requests_total counter",
            ]
            for (method, route, status), n in sorted(self.requests.items()):
                lab = _labels([("method", method), ("route", route), ("status", status)])
                lines.append(f"shopclip_http_requests_total{lab} {n}")
            lines += [
                "# HELP shopclip_http_request_duration_seconds Request latency, server side.",
                "# TYPE shopclip_http_request_duration_seconds histogram",
            ]
            for (method, route), counts in sorted(self.hist.items()):
                base = [("method", method), ("route", route)]
                cum = 0
                for le, c in zip([*map(str, BUCKETS), "+Inf"], counts, strict=True):
                    cum += c
                    lines.append(f"shopclip_http_request_duration_seconds_bucket{_labels([*base, ('le', le)])} {cum}")
                lines.append(f"shopclip_http_request_duration_seconds_sum{_labels(base)} {self.hist_sum[(method, route)]:.6f}")
                lines.append(f"shopclip_http_request_duration_seconds_count{_labels(base)} {cum}")
            lines += [
                "# HELP shopclip_catalog_writes_total Acknowledged catalog updates.",
                "# TYPE shopclip_catalog_writes_total counter",
            ]
            for op in ("upsert", "delete"):
                lines.append(f"shopclip_catalog_writes_total{_labels([('op', op)])} {self.writes.get(op, 0)}")
        lines += [
            "# HELP shopclip_uptime_seconds Seconds since the app was created.",
            "# TYPE shopclip_uptime_seconds gauge",
            f"shopclip_uptime_seconds {time.time() - self.started:.3f}",
        ]
        for name, (help_text, samples) in (gauges() if gauges else {}).items():
            lines += [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} gauge"]
            for labels, value in samples:
                lines.append(f"{name}{_labels(sorted(labels.items()))} {value:g}")
        return "\n".join(lines) + "\n"
