"""Prometheus metrics, each set on its own registry (no import-time globals)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class WriterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram("couponsvc_writer_batch_events", "Events per applied batch",
                                    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
                                    registry=registry)
        self.batch_seconds = Histogram("couponsvc_writer_batch_seconds",
                                       "Time to apply one batch to Postgres",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.applied = Counter("couponsvc_writer_events", "Events applied to Postgres",
                               registry=registry)
        self.parked = Counter("couponsvc_writer_parked_events",
                              "Events parked after repeated failures", registry=registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.applied.inc(size)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("couponsvc_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("couponsvc_http_request_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.outbox = OutboxGauges()
        registry.register(self.outbox)


@dataclass(frozen=True, slots=True)
class OutboxReading:
    """How far the writer is behind, as one scrape read it from Redis."""

    lag: int
    pending: int
    oldest_unacked_ms: int | None  # the oldest entry's time (its id), None when none
    read_at: float  # time.monotonic() when it was read

    def oldest_age_seconds(self) -> float:
        """Its age now (a reading may serve a few scrapes): never understated."""
        if self.oldest_unacked_ms is None:
            return 0.0
        return max(0.0, time.time() - self.oldest_unacked_ms / 1000)


class OutboxGauges(Collector):
    """The outbox gauges of the latest scrape, or none when Redis did not answer
    it: a stale lag would look like a healthy backlog during an outage.
    `couponsvc_outbox_gauges_up` says which, so an operator can alert on it."""

    def __init__(self) -> None:
        self.reading: OutboxReading | None = None
        self.refreshing: asyncio.Future[None] | None = None  # the read under way

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("couponsvc_outbox_gauges_up",
                                "1 if the outbox gauges were read from Redis on this scrape",
                                value=0 if self.reading is None else 1)
        if self.reading is None:
            return
        yield GaugeMetricFamily("couponsvc_outbox_lag_events",
                                "Outbox entries not yet delivered to the writer",
                                value=self.reading.lag)
        yield GaugeMetricFamily("couponsvc_outbox_pending_events",
                                "Outbox entries delivered but not yet acknowledged",
                                value=self.reading.pending)
        yield GaugeMetricFamily("couponsvc_outbox_oldest_unacked_seconds",
                                "Age of the oldest entry the writer has not acknowledged",
                                value=self.reading.oldest_age_seconds())


class TimingMiddleware:
    """Counts requests and their latency by route template and status (pure ASGI:
    no per-request task or body buffering, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, templates: dict[Any, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates  # endpoint -> path template: bounded labels
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            elapsed = time.perf_counter() - started
            route = self.templates.get(scope.get("endpoint"), "unmatched")
            counter, histogram = self._children(scope["method"], route, status)
            counter.inc()
            histogram.observe(elapsed)

    def _children(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        """The labelled series of one (method, route, status): looked up once,
        since prometheus_client's labels() costs a few microseconds a call."""
        key = (method, route, status)
        children = self._series.get(key)
        if children is None:
            children = self._series[key] = (
                self.metrics.requests.labels(method, route, str(status)),
                self.metrics.latency.labels(method, route))
        return children
