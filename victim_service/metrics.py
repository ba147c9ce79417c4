"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Histogram


class ServiceMetrics:
    def __init__(self) -> None:
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
            "victim_client_images", "Images answered per client", ["client"], registry=self.registry
        )
        self.latency = Histogram(
            "victim_request_latency_seconds",
            "Prediction request latency",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.per_client: Tally[str] = Tally()
        """Images per client (API-key hash or address): the key stateful defenses use."""

    def count_client(self, client: str, images: int) -> None:
        self.per_client[client] += images
        self.client_images.labels(client=client).inc(images)
