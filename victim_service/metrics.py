"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

OTHER_CLIENTS = "other"


class ServiceMetrics:
    """The service's counters. The per-client label is bounded: the first `max_client_labels`
    clients get their own series, every later one counts under `client="other"`, so a flood of
    addresses or keys cannot grow the registry (a metrics-cardinality attack). Per-client state
    that defenses need lives with them (the rate limiter's buckets, PRADA's LRU), bounded too.
    """

    def __init__(self, max_client_labels: int = 100) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "victim_requests", "Prediction requests answered", ["status"], registry=self.registry
        )
        self.images = Counter("victim_images", "Images answered", registry=self.registry)
        self.errors = Counter(
            "victim_errors", "Refused requests by kind", ["kind"], registry=self.registry
        )
        self.flagged = Counter(
            "victim_flagged_queries",
            "Images flagged, by defense",
            ["defense"],
            registry=self.registry,
        )
        self.client_images = Counter(
            "victim_client_images",
            f"Images answered per client (the first {max_client_labels}; the rest as 'other')",
            ["client"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "victim_request_latency_seconds",
            "Prediction request latency",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "victim_batch_images",
            "Images per forward pass: how well the micro-batcher fills the model's batches",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "victim_requests_in_flight",
            "Prediction requests received and not yet answered",
            registry=self.registry,
        )
        self.max_client_labels = max_client_labels
        self._labelled: set[str] = set()
        self._lock = threading.Lock()

    def track_clients(self, name: str, what: str, count) -> None:
        """A gauge read at scrape time: how many clients a bounded structure holds now."""
        Gauge(name, what, registry=self.registry).set_function(count)

    def count_client(self, client: str, images: int) -> None:
        with self._lock:
            if client not in self._labelled and len(self._labelled) < self.max_client_labels:
                self._labelled.add(client)
            label = client if client in self._labelled else OTHER_CLIENTS
        self.client_images.labels(client=label).inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)
