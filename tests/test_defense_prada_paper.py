"""PRADA replayed against Juuti et al.'s Algorithm 1 and its reference port, on hand-built streams.

Nothing here reuses the detector's code: thresholds and distances are worked out by hand, and
the long stream is checked against a plain transcription of the algorithm in this file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import shapiro

from defense.defenses.prada import PradaDetector


def point(value: float, dims: int = 4) -> torch.Tensor:
    """A uint8 image whose first pixel is `value`: distances are |a - b| / 255."""
    x = torch.zeros(dims, dtype=torch.uint8)
    x[0] = int(value)
    return x


def test_thresholds_stay_monotone_and_distances_are_kept_per_class():
    det = PradaDetector(threshold=0.9)
    for v in (0, 10, 30, 35, 36, 37):
        det.observe("c", point(v), label=0)
    det.observe("c", point(200), label=1)  # first of class 1: no distance
    s = det.clients["c"]
    # class 0 by hand (units of 1/255):
    #   0: G={0}, DG={0}, T=0            10: d=10 joins, DG={0,10}: mean-std = 0, T=0
    #  30: d=20 joins, DG={0,10,20}: 10 - 8.165 = 1.835, T=1.835
    #  35: d=5 joins, DG={0,10,20,5}: 8.75 - 7.395 = 1.355 < T, so T stays 1.835 (monotone)
    #  36: d=1 <= T, stays out     37: d=2 > T joins, DG={0,10,20,5,2}: 7.4 - 7.088 = 0.312
    assert np.allclose(np.array(s.distances[0]) * 255, [10, 20, 5, 1, 2])
    assert s.thresholds[0] * 255 == pytest.approx(10 - np.sqrt(200 / 3), abs=1e-9)
    assert np.allclose(np.array(s.admitted[0]) * 255, [0, 10, 20, 5, 2])
    assert list(s.distances.get(1, [])) == [] and s.thresholds[1] == 0.0
    assert s.last_w is None and not s.alarm  # far fewer than 100 distances


def transcribe(stream, labels, delta=0.9):
    """Algorithm 1 with the port's pooling, in plain Python: the W at every 10th query."""
    g, dg, t, d = {}, {}, {}, {}
    out = []
    for q, (x, c) in enumerate(zip(stream, labels, strict=True), start=1):
        x = x.astype(np.float64) / 255
        if c not in g:
            g[c], dg[c], t[c] = [x], [0.0], 0.0
        else:
            dmin = min(float(np.linalg.norm(x - y)) for y in g[c])
            d.setdefault(c, []).append(dmin)
            if dmin > t[c]:
                g[c].append(x)
                dg[c].append(dmin)
                t[c] = max(t[c], float(np.mean(dg[c]) - np.std(dg[c])))
        if q % 10 == 0:
            pooled = np.concatenate([v for v in d.values() if len(v) >= 10] or [np.empty(0)])
            if len(pooled):
                pooled = pooled[np.abs(pooled - pooled.mean()) < 3 * pooled.std()]
            kept = pooled
            if len(kept) > 100:
                w = float(shapiro(kept).statistic)
                out.append((q, w, w < delta))
    return out


def test_a_long_stream_matches_the_transcribed_algorithm():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, size=400).tolist()
    stream = rng.integers(0, 256, size=(400, 12)).astype(np.uint8)
    # a synthetic tail: tiny steps around one image
    stream[300:] = stream[300] // 2 + rng.integers(0, 3, size=(100, 12)).astype(np.uint8)
    expected = transcribe(stream, labels)
    assert expected and expected[0][0] > 100  # tests start only once > 100 distances are pooled
    det = PradaDetector(threshold=0.9, history=1000)
    got = {}
    for q, (x, c) in enumerate(zip(stream, labels, strict=True), start=1):
        alarm = det.observe("c", torch.from_numpy(x), c)
        if q % 10 == 0:
            got[q] = (det.clients["c"].last_w, alarm)
    for q, w, alarm in expected:
        assert got[q][0] == pytest.approx(w, abs=1e-9)
        assert got[q][1] == alarm
    assert any(a for _, _, a in expected) and not expected[0][2]  # the test can go both ways


def test_outliers_beyond_three_std_are_removed_before_the_test():
    """A black first image puts one far distance into an otherwise normal record: W of the raw
    record is below delta (an alarm without the removal); with the removal there is none."""
    rng = np.random.default_rng(0)
    stream = [np.zeros(64, dtype=np.uint8)] + [
        rng.integers(0, 256, size=64).astype(np.uint8) for _ in range(129)
    ]
    det = PradaDetector(threshold=0.9)
    for x in stream:
        det.observe("c", torch.from_numpy(x), 0)
    state = det.clients["c"]
    raw = np.array(state.distances[0])
    assert len(raw) == 129 and shapiro(raw).statistic < 0.9
    kept = raw[np.abs(raw - raw.mean()) < 3 * raw.std()]
    assert 100 < len(kept) < len(raw)
    assert state.last_w == pytest.approx(shapiro(kept).statistic, abs=1e-12)
    assert state.last_w > 0.9 and not state.alarm
