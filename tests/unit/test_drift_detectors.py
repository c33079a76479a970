"""Page-Hinkley, CUSUM and prediction drift against plain-Python definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeops.drift import Cusum, PageHinkley, PredictionDriftMonitor
from edgeops.errors import DriftError


def _ph_python(xs: list[float], delta: float, threshold: float, alpha: float, min_n: int) -> list[int]:
    alarms, n, mean, su, mu, sd, md = [], 0, 0.0, 0.0, 0.0, 0.0, 0.0
    for i, x in enumerate(xs):
        n += 1
        mean += (x - mean) * (1.0 / n)
        su = alpha * su + (x - mean - delta)
        sd = alpha * sd + (x - mean + delta)
        mu, md = min(mu, su), max(md, sd)
        if n >= min_n and (su - mu > threshold or md - sd > threshold):
            alarms.append(i)
            n, mean, su, mu, sd, md = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    return alarms


def _stream(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.9, 0.02, 3000), rng.normal(0.6, 0.05, 3000), rng.normal(0.95, 0.02, 2000)])


def test_page_hinkley_matches_definition_and_detects() -> None:
    xs = _stream(0)
    expected = _ph_python(xs.tolist(), 0.005, 20.0, 1.0, 30)
    ph = PageHinkley(delta=0.005, threshold=20.0)
    got = [i for i, x in enumerate(xs) if ph.update(float(x))]
    assert got == expected and len(got) >= 2
    assert 3000 <= got[0] < 3300
    ph2 = PageHinkley(delta=0.005, threshold=20.0)
    assert ph2.update_many(xs) == len(expected) and ph2.first_alarm == expected[0]
    assert ph2.get() == pytest.approx(ph.get())


@settings(max_examples=30, deadline=None)
@given(xs=st.lists(st.floats(-100, 100), max_size=300), cut=st.integers(0, 300))
def test_page_hinkley_update_many_equals_loop(xs: list[float], cut: int) -> None:
    a, b = PageHinkley(threshold=5.0, min_instances=5), PageHinkley(threshold=5.0, min_instances=5)
    n_loop = sum(a.update(x) for x in xs)
    n_many = b.update_many(np.array(xs[:cut], dtype=np.float64)) + b.update_many(np.array(xs[cut:]))
    assert n_loop == n_many and a.get() == b.get()


def test_page_hinkley_modes_empty_and_reset() -> None:
    assert PageHinkley().get() == 0.0
    up = PageHinkley(threshold=5.0, mode="up")
    down = PageHinkley(threshold=5.0, mode="down")
    falling = np.concatenate([np.ones(200), np.zeros(200)])
    assert up.update_many(falling) == 0 and down.update_many(falling) >= 1
    down.reset()
    assert down.get() == 0.0
    assert up.update_many(np.array([], dtype=np.float64)) == 0 and up.first_alarm == -1
    assert not up.update(float("nan"))
    with pytest.raises(DriftError):
        PageHinkley(mode="sideways")  # type: ignore[arg-type]
    with pytest.raises(DriftError):
        up.update_many(np.zeros((2, 2)))


def _cusum_python(xs: list[float], target: float, k: float, h: float) -> list[int]:
    alarms, hi, lo = [], 0.0, 0.0
    for i, x in enumerate(xs):
        hi = max(0.0, hi + x - target - k)
        lo = max(0.0, lo + target - k - x)
        if hi > h or lo > h:
            alarms.append(i)
            hi = lo = 0.0
    return alarms


def test_cusum_matches_definition() -> None:
    xs = _stream(1)
    expected = _cusum_python(xs.tolist(), 0.9, 0.05, 1.0)
    c = Cusum(target=0.9, slack=0.05, threshold=1.0)
    got = [i for i, x in enumerate(xs) if c.update(float(x))]
    assert got == expected and got[0] >= 3000
    c2 = Cusum(target=0.9, slack=0.05, threshold=1.0)
    assert c2.update_many(xs) == len(expected) and c2.first_alarm == expected[0]


def test_cusum_warmup_estimates_target() -> None:
    c = Cusum(warmup=100, slack=0.05, threshold=1.0)
    assert c.target is None and c.get() == 0.0
    xs = _stream(2)
    n = c.update_many(xs)
    assert c.target == pytest.approx(xs[:100].mean())
    assert n >= 1 and c.first_alarm >= 3000
    c.reset()
    assert c.target is None
    fixed = Cusum(target=0.5)
    fixed.reset()
    assert fixed.target == 0.5


def test_prediction_drift() -> None:
    ref = [0.5, 0.3, 0.2]
    pm = PredictionDriftMonitor(ref)
    empty = pm.report()
    assert empty.n_samples == 0 and empty.psi == 0.0 and not empty.drifted
    rng = np.random.default_rng(3)
    pm.update(rng.choice(3, size=5000, p=ref))
    rep = pm.report()
    assert rep.psi < 0.01 and not rep.drifted and rep.unknown_rate == 0.0
    pm.reset()
    pm.update(rng.choice(3, size=5000, p=[0.2, 0.3, 0.5]).astype(np.int32))
    rep = pm.report()
    assert rep.drifted and rep.psi > 0.3 and rep.total_variation == pytest.approx(0.3, abs=0.03)
    pm.update(np.array([7, -1], dtype=np.int16))
    assert pm.report().unknown_rate == pytest.approx(2 / 5002)
    with pytest.raises(DriftError):
        pm.update(np.zeros((2, 2), dtype=int))
    with pytest.raises(DriftError):
        pm.update(np.array([0.5]))
    with pytest.raises(DriftError):
        PredictionDriftMonitor([0.0, 0.0])
    assert pm.report().to_dict()["n_samples"] == 5002
