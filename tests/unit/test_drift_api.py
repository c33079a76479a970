"""The public drift API: profiles, monitors, reports, errors and serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeops.drift import (
    PSI_EPSILON,
    DriftMonitor,
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    ReferenceProfile,
)
from edgeops.errors import DriftError


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20_000, 4))
    X[:, 1] = rng.exponential(size=20_000)
    X[:, 2] = rng.integers(0, 3, size=20_000)  # heavy ties
    X[::10, 3] = np.nan
    return X


@pytest.fixture(scope="module")
def profile(ref: np.ndarray) -> ReferenceProfile:
    return ReferenceProfile.fit(ref, bins=10)


def test_profile_contents(profile: ReferenceProfile, ref: np.ndarray) -> None:
    assert profile.n_features == 4
    f0 = profile.features[0]
    assert f0.edges.size == 9 and np.all(np.diff(f0.edges) > 0)
    assert f0.bin_counts.sum() == 20_000
    np.testing.assert_allclose(f0.expected_fractions, 0.1, atol=1e-3)
    assert 1000 <= f0.grid.size <= 4100
    assert f0.min == ref[:, 0].min() and f0.max == ref[:, 0].max()
    assert f0.mean == pytest.approx(ref[:, 0].mean())
    assert f0.std == pytest.approx(ref[:, 0].std())
    # Ties: three distinct values give three bins, none of them empty.
    f2 = profile.features[2]
    assert f2.edges.tolist() == [1.0, 2.0] and np.all(f2.bin_counts > 0)
    assert f2.grid.tolist() == [0.0, 1.0, 2.0]
    f3 = profile.features[3]
    assert f3.n_nan == 2000 and f3.nan_rate == pytest.approx(0.1)
    assert f3.bin_counts.sum() == 18_000


def test_profile_json_round_trip(profile: ReferenceProfile) -> None:
    d = profile.to_dict()
    assert d["version"] == 1
    text = json.dumps(d, allow_nan=False)
    back = ReferenceProfile.from_dict(json.loads(text))
    assert back == profile
    assert back.to_dict() == d
    for a, b in zip(back.features, profile.features, strict=True):
        np.testing.assert_array_equal(a.grid, b.grid)
        np.testing.assert_array_equal(a.grid_lt, b.grid_lt)
        assert a.grid.dtype == np.float64 and a.grid_lt.dtype == np.int64


def test_profile_bad_dicts(profile: ReferenceProfile) -> None:
    d = profile.to_dict()
    with pytest.raises(DriftError, match="version"):
        ReferenceProfile.from_dict({**d, "version": 2})
    with pytest.raises(DriftError):
        ReferenceProfile.from_dict({**d, "kind": "other"})
    with pytest.raises(DriftError):
        ReferenceProfile.from_dict("nope")  # type: ignore[arg-type]
    broken = json.loads(json.dumps(d))
    broken["features"][0]["grid"] = broken["features"][0]["grid"][::-1]
    with pytest.raises(DriftError, match="feature 0"):
        ReferenceProfile.from_dict(broken)
    broken = json.loads(json.dumps(d))
    del broken["features"][1]["edges"]
    with pytest.raises(DriftError, match="edges"):
        ReferenceProfile.from_dict(broken)
    broken = json.loads(json.dumps(d))
    broken["features"][0]["bin_counts"][0] = -1
    with pytest.raises(DriftError):
        ReferenceProfile.from_dict(broken)
    assert issubclass(DriftError, ValueError) and DriftError.code == "drift_error"


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(DriftError, match="2-D"):
        ReferenceProfile.fit(np.zeros(10))
    with pytest.raises(DriftError, match="ndarray"):
        ReferenceProfile.fit([[1.0, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(DriftError, match="bins"):
        ReferenceProfile.fit(np.zeros((10, 2)), bins=0)
    with pytest.raises(DriftError, match="real numbers"):
        ReferenceProfile.fit(np.zeros((10, 2), dtype=complex))


def test_empty_report_is_defined(profile: ReferenceProfile) -> None:
    rep = DriftMonitor(profile).report()
    assert isinstance(rep, DriftReport)
    assert rep.n_samples == 0 and rep.overall_score == 0.0 and rep.drifted_features == []
    assert len(rep.features) == 4
    for f in rep.features:
        assert isinstance(f, FeatureDrift)
        assert (f.psi, f.js_distance, f.ks_statistic, f.wasserstein) == (0.0, 0.0, 0.0, 0.0)
        assert f.ks_pvalue == 1.0 and f.nan_rate == 0.0 and f.out_of_range_rate == 0.0
    json.dumps(rep.to_dict(), allow_nan=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_distribution_is_not_drift(ref: np.ndarray, profile: ReferenceProfile, dtype: type) -> None:
    rng = np.random.default_rng(2)
    cur = rng.normal(size=(20_000, 4))
    cur[:, 1] = rng.exponential(size=20_000)
    cur[:, 2] = rng.integers(0, 3, size=20_000)
    cur[::10, 3] = np.nan
    mon = DriftMonitor(profile)
    mon.update(cur.astype(dtype))
    rep = mon.report()
    assert rep.n_samples == 20_000
    assert rep.drifted_features == [] and rep.overall_score == 0.0
    for f in rep.features:
        assert f.psi < 0.01 and f.ks_pvalue > 1e-4
    assert rep.features[3].nan_rate == pytest.approx(0.1)


def test_shift_is_drift(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(3)
    cur = rng.normal(size=(20_000, 4))
    cur[:, 1] = rng.exponential(size=20_000)
    cur[:, 2] = rng.integers(0, 3, size=20_000)
    cur[:, 0] += 1.0
    mon = DriftMonitor(profile)
    mon.update(cur)
    rep = mon.report()
    assert 0 in rep.drifted_features
    f0 = rep.features[0]
    assert f0.psi > 0.5 and f0.mean_shift_sd == pytest.approx(1.0, abs=0.05)
    assert f0.wasserstein == pytest.approx(1.0, abs=0.05)
    assert "psi" in f0.reasons and f0.drifted
    assert rep.overall_score == pytest.approx(len(rep.drifted_features) / 4)


def test_small_shift_below_default_thresholds() -> None:
    # ANCHORS: a 0.1 sigma shift gives PSI ~ 0.008, JS ~ 0.03, below the defaults.
    rng = np.random.default_rng(4)
    profile = ReferenceProfile.fit(rng.normal(size=(100_000, 1)))
    mon = DriftMonitor(profile)
    mon.update(rng.normal(0.1, 1.0, size=(100_000, 1)))
    f = mon.report().features[0]
    assert 0.005 < f.psi < 0.015 and 0.02 < f.js_distance < 0.05
    assert f.ks_pvalue < 1e-10 and not f.drifted


def test_thresholds_are_the_callers(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(5)
    cur = rng.normal(0.15, 1.0, size=(5_000, 4))
    strict = DriftThresholds(psi=0.01, min_samples=10)
    rep = DriftMonitor(profile, strict)
    rep.update(cur)
    assert 0 in rep.report().drifted_features
    with pytest.raises(DriftError):
        DriftThresholds(psi=-1)
    assert DriftThresholds(ks_pvalue=math.inf).to_dict()["ks_pvalue"] is None


def test_min_samples_guards_small_windows(profile: ReferenceProfile) -> None:
    mon = DriftMonitor(profile)
    mon.update(np.full((10, 4), 50.0))
    rep = mon.report()
    assert rep.features[0].out_of_range_rate == 1.0
    assert rep.drifted_features == []  # 10 < min_samples


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (np.zeros(4), "2-D"),
        (np.zeros((2, 3)), "3 features"),
        (np.zeros((2, 4), dtype=np.int64), "float32 or float64"),
        (np.zeros((2, 4), dtype=np.float16), "float32 or float64"),
        ([[0.0] * 4], "ndarray"),
        (np.zeros((2, 4), dtype=">f8"), "byte-order"),
    ],
)
def test_update_rejects_bad_batches(profile: ReferenceProfile, batch: object, match: str) -> None:
    mon = DriftMonitor(profile)
    with pytest.raises(DriftError, match=match):
        mon.update(batch)  # type: ignore[arg-type]
    assert mon.n_samples == 0


def test_empty_and_single_row_and_strided(profile: ReferenceProfile, ref: np.ndarray) -> None:
    mon = DriftMonitor(profile)
    mon.update(np.zeros((0, 4)))
    assert mon.report().n_samples == 0
    mon.update(ref[:1])
    assert mon.n_samples == 1
    a = DriftMonitor(profile)
    a.update(np.asfortranarray(ref[:500]))
    b = DriftMonitor(profile)
    b.update(np.ascontiguousarray(ref[:500]))
    assert a.state_dict() == b.state_dict()
    wide = np.repeat(ref[:500], 2, axis=1)[:, ::2]  # non-contiguous view
    c = DriftMonitor(profile)
    c.update(wide)
    assert c.state_dict() == b.state_dict()


def test_reset(profile: ReferenceProfile, ref: np.ndarray) -> None:
    mon = DriftMonitor(profile)
    empty = mon.state_dict()
    mon.update(ref[:100])
    mon.reset()
    assert mon.state_dict() == empty and mon.report().n_samples == 0


def test_constant_and_all_nan_features() -> None:
    X = np.column_stack([np.full(1000, 3.0), np.full(1000, np.nan), np.arange(1000.0)])
    prof = ReferenceProfile.fit(X)
    assert prof.features[0].edges.size == 0 and prof.features[0].grid.tolist() == [3.0]
    assert prof.features[1].grid.size == 0
    json.dumps(prof.to_dict(), allow_nan=False)
    assert ReferenceProfile.from_dict(json.loads(json.dumps(prof.to_dict()))) == prof
    mon = DriftMonitor(prof)
    mon.update(X)
    rep = mon.report()
    for f in rep.features:
        assert f.psi == 0.0 and f.ks_statistic == 0.0 and not f.drifted
    assert rep.features[1].nan_rate == 1.0
    mon.reset()
    Y = X.copy()
    Y[:, 0] = 4.0
    Y[:, 1] = 1.0
    mon.update(Y)
    rep = mon.report()
    assert rep.features[0].out_of_range_rate == 1.0 and rep.features[0].ks_statistic == 1.0
    assert rep.features[0].mean_shift_sd == 1.0  # reference sd 0: absolute shift
    assert rep.features[1].nan_rate == 0.0 and rep.features[1].out_of_range_rate == 1.0
    assert rep.drifted_features == [0, 1]
    json.dumps(rep.to_dict(), allow_nan=False)


def test_infinities_are_out_of_range(profile: ReferenceProfile) -> None:
    mon = DriftMonitor(profile)
    batch = np.zeros((4, 4))
    batch[0, 0] = np.inf
    batch[1, 0] = -np.inf
    mon.update(batch)
    f = mon.report().features[0]
    assert f.out_of_range_rate == 0.5 and math.isfinite(f.mean) and f.mean == 0.0
    json.dumps(mon.report().to_dict(), allow_nan=False)


def test_psi_matches_numpy(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(6)
    cur = rng.normal(0.3, 1.2, size=(7_000, 4))
    mon = DriftMonitor(profile)
    mon.update(cur)
    rep = mon.report()
    for j in (0, 1):
        f = profile.features[j]
        b = np.bincount(np.searchsorted(f.edges, cur[:, j], side="right"), minlength=f.edges.size + 1)
        a = b / b.sum()
        e = f.bin_counts / f.bin_counts.sum()
        k = a.size
        a_s = (a + PSI_EPSILON) / (1 + k * PSI_EPSILON)
        e_s = (e + PSI_EPSILON) / (1 + k * PSI_EPSILON)
        psi = np.sum((a_s - e_s) * np.log(a_s / e_s))
        assert rep.features[j].psi == pytest.approx(psi, rel=1e-12)
