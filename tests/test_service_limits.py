"""Many clients: the rate limiter's buckets and the per-client metric label stay bounded."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from victim_service.errors import ApiError
from victim_service.limits import RateLimiter
from victim_service.metrics import ServiceMetrics


def test_rate_limiter_keeps_at_most_max_clients_buckets():
    limiter = RateLimiter(rate=1.0, burst=4, max_clients=100)
    for i in range(5_000):
        limiter.take(f"addr:10.0.{i // 256}.{i % 256}", 1)
    assert len(limiter) == 100
    assert limiter.evicted == 4_900


def test_refilled_buckets_go_first_then_the_least_recently_used(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("victim_service.limits.time.monotonic", lambda: clock[0])
    limiter = RateLimiter(rate=1.0, burst=4, max_clients=3)
    for i in range(3):
        limiter.take(f"idle{i}", 1)
    clock[0] = 10.0  # every bucket has refilled: forgetting them loses nothing
    limiter.take("new", 1)
    assert len(limiter) == 1 and limiter.evicted == 0
    limiter.take("busy", 4)  # empty: its next image must wait
    clock[0] = 10.5
    limiter.take("a", 1)
    limiter.take("b", 1)  # over the bound: "new", used least recently, goes
    assert len(limiter) == 3 and limiter.evicted == 1
    with pytest.raises(ApiError) as refused:
        limiter.take("busy", 1)
    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "1", "Retry-After-Ms": "500"}


def test_client_label_is_bounded_and_the_rest_count_as_other():
    metrics = ServiceMetrics(max_client_labels=10)
    for i in range(1_000):
        metrics.count_client(f"addr:{i}", 2)
    text = metrics.render().decode()
    labels = re.findall(r'victim_client_images_total\{client="([^"]+)"\}', text)
    assert len(labels) == 11 and "other" in labels
    total = sum(
        float(v) for v in re.findall(r'victim_client_images_total\{client="[^"]+"\} (\S+)', text)
    )
    assert total == 2_000  # nothing lost, only pooled


def test_many_keys_through_the_service_keep_state_bounded(tmp_path):
    """200 distinct keys, each one request: buckets and labels stay at their bounds."""
    from benchmarks.common import throwaway_victim
    from shared.imaging import encode_image
    from tests.servers import running_service
    from victim_service.app import create_app
    from victim_service.settings import VictimSettings

    keys = [f"key-{i:04d}" for i in range(200)]
    settings = VictimSettings(
        checkpoint=throwaway_victim(tmp_path / "v.pt", arch="cnn5"), api_keys=",".join(keys),
        rate_limit=0.01, rate_max_clients=50, metrics_max_clients=5, amp=False,
    )  # fmt: skip
    app = create_app(settings)
    png = encode_image(np.zeros((32, 32, 3), dtype=np.uint8))
    with running_service(settings, app=app) as url, httpx.Client(base_url=url) as client:
        for key in keys:
            response = client.post(
                "/v1/predict", files=[("images", ("a.png", png, "image/png"))],
                headers={"x-api-key": key},
            )  # fmt: skip
            assert response.status_code == 200
        text = client.get("/metrics", headers={"x-api-key": keys[0]}).text
    assert len(app.state.limiter) == 50 and app.state.limiter.evicted == 150
    labels = re.findall(r'victim_client_images_total\{client="([^"]+)"\} (\S+)', text)
    assert len(labels) == 6 and sum(float(v) for _, v in labels) == 200
