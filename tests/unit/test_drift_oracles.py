"""The binned statistics against numpy / scipy oracles on the same data, within the stated bounds."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from edgeops._native import _drift
from edgeops.drift import DriftMonitor, ReferenceProfile

CASES = [
    ("same", lambda r, n: r.normal(size=n)),
    ("shift_0.1", lambda r, n: r.normal(0.1, 1.0, size=n)),
    ("shift_0.5_scale", lambda r, n: r.normal(0.5, 1.5, size=n)),
    ("lognormal", lambda r, n: r.lognormal(size=n)),
    ("outside", lambda r, n: r.normal(3.0, 2.0, size=n)),
    ("rounded", lambda r, n: np.round(r.normal(size=n), 1)),
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.random.default_rng(10).normal(size=20_000)


@pytest.fixture(scope="module")
def profile(reference: np.ndarray) -> ReferenceProfile:
    return ReferenceProfile.fit(reference[:, None])


@pytest.mark.parametrize(("name", "gen"), CASES)
def test_against_scipy(reference: np.ndarray, profile: ReferenceProfile, name: str, gen: object) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    cur = gen(rng, 30_000)  # type: ignore[operator]
    mon = DriftMonitor(profile)
    mon.update(cur[:, None])
    f = mon.report().features[0]

    # KS: the raw two-sample statistic lies within the computed bound, and the bound is small.
    ks = stats.ks_2samp(reference, cur, method="asymp")
    assert f.ks_statistic <= ks.statistic + 1e-12
    assert ks.statistic <= f.ks_statistic + f.ks_error_bound + 1e-12
    assert abs(f.ks_statistic - ks.statistic) <= 1e-3
    # p-values: the same asymptotic distribution evaluated at our D (Stephens' correction vs
    # scipy's finite-n kstwo), and the same decision as scipy on the raw statistic.
    en = len(reference) * len(cur) / (len(reference) + len(cur))
    p_ref = stats.kstwo.sf(f.ks_statistic, round(en))
    if p_ref > 1e-8:
        assert f.ks_pvalue == pytest.approx(p_ref, rel=0.05, abs=1e-4)
    else:
        assert f.ks_pvalue < 1e-6
    for alpha in (0.01, 0.05):
        if abs(np.log(max(ks.pvalue, 1e-300) / alpha)) > 0.5:
            assert (f.ks_pvalue < alpha) == (ks.pvalue < alpha)

    # Wasserstein-1 within the computed bound.
    w = stats.wasserstein_distance(reference, cur)
    assert abs(f.wasserstein - w) <= f.wasserstein_error_bound + 1e-9
    assert abs(f.wasserstein - w) <= 0.01 * max(w, 0.1)

    # PSI and Jensen-Shannon against numpy / scipy on the profile's bins.
    fp = profile.features[0]
    counts = np.bincount(np.searchsorted(fp.edges, cur, side="right"), minlength=fp.edges.size + 1)
    a = counts / counts.sum()
    e = fp.expected_fractions
    eps = 1e-4
    a_s, e_s = (a + eps) / (1 + a.size * eps), (e + eps) / (1 + a.size * eps)
    assert f.psi == pytest.approx(np.sum((a_s - e_s) * np.log(a_s / e_s)), rel=1e-10, abs=1e-15)
    assert f.js_distance == pytest.approx(jensenshannon(a, e), rel=1e-9, abs=1e-12)

    # Moments and rates.
    assert f.mean == pytest.approx(cur.mean(), rel=1e-9, abs=1e-12)
    assert f.std == pytest.approx(cur.std(), rel=1e-9)
    oor = np.mean((cur < reference.min()) | (cur > reference.max()))
    assert f.out_of_range_rate == pytest.approx(oor)


def test_edges_are_reference_quantiles(reference: np.ndarray, profile: ReferenceProfile) -> None:
    q = np.quantile(reference, np.arange(1, 10) / 10)
    v = np.sort(reference)
    step = np.max(np.diff(v[(np.arange(1, 10) * v.size) // 10 + np.array([[-1], [1]])], axis=0))
    np.testing.assert_allclose(profile.features[0].edges, q, atol=step)


def test_bucketize_matches_searchsorted() -> None:
    rng = np.random.default_rng(11)
    for raw in (np.sort(rng.normal(size=300)), np.array([0.0, 1.0, 1e-300, 2.0]).cumsum(), np.array([5.0])):
        grid = np.unique(raw)
        x = np.concatenate([rng.normal(size=2000) * 3, grid, np.nextafter(grid, -np.inf),
                            np.nextafter(grid, np.inf), [np.inf, -np.inf, 1e308, -1e308]])
        for cells in (1, 7, 64, 4096):
            got = _drift.bucketize(grid, x, cells)
            np.testing.assert_array_equal(got, np.searchsorted(grid, x, side="right"))


def test_kolmogorov_sf_matches_scipy() -> None:
    from scipy.special import kolmogorov

    for lam in np.linspace(0.05, 4.0, 80):
        assert _drift.kolmogorov_sf(lam) == pytest.approx(kolmogorov(lam), rel=1e-9, abs=1e-14)
    assert _drift.kolmogorov_sf(0.0) == 1.0
    assert _drift.kolmogorov_sf(40.0) == 0.0


def test_float32_batches_match_float64_of_same_values(profile: ReferenceProfile) -> None:
    cur = np.random.default_rng(12).normal(size=(5_000, 1)).astype(np.float32)
    a, b = DriftMonitor(profile), DriftMonitor(profile)
    a.update(cur)
    b.update(cur.astype(np.float64))
    assert a.state_dict() == b.state_dict()
