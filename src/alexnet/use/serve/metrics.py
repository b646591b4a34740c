"""The service's Prometheus metrics (``GET /metrics``) and the middleware that counts every answer."""

from __future__ import annotations

import time

PATHS = ("/", "/predict", "/explain", "/healthz", "/metrics")  # metric labels; anything else counts as "other"


class Metrics:
    """The service's Prometheus metrics in a registry of its own (two apps in one process do not mix)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("alexnet_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.latency = Histogram("alexnet_request_seconds", "time from a request's arrival to its answer", ["path"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=r)
        self.batch = Histogram("alexnet_batch_size", "images per forward pass",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.forward = Histogram("alexnet_forward_seconds", "time of one forward pass", registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.errors = Counter("alexnet_errors", "requests refused or failed, by reason", ["reason"], registry=r)
        self.held = Gauge("alexnet_requests_held", "requests being read, decoded or predicted now", registry=r)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Measured:
    """ASGI middleware: counts every HTTP answer by path and status, and times it."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope["path"] if scope["path"] in PATHS else "other"
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
