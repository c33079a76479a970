"""Conformance properties of the drift monitors (hypothesis): batching, order, merging, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgeops.drift import DriftMonitor, PredictionDriftMonitor, ReferenceProfile
from edgeops.errors import DriftError

D = 3
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
    st.sampled_from([np.nan, 0.0, 1.0, -1.0, np.inf, -np.inf]),
)
batches = st.integers(0, 40).flatmap(lambda n: arrays(np.float64, (n, D), elements=values))


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(20)
    X = rng.normal(size=(3_000, D))
    X[:, 1] = np.round(X[:, 1])  # ties
    X[:, 2] = 1.0  # constant
    return ReferenceProfile.fit(X, bins=8, cdf_points=256)


def _integer_state(mon: DriftMonitor) -> dict[str, object]:
    s = mon.state_dict()
    return {k: s[k] for k in ("hist", "n_nan", "n_below", "n_above", "n_inf", "n_rows")}


def _float_state(mon: DriftMonitor) -> np.ndarray:
    s = mon.state_dict()
    return np.array([s[k] for k in ("s1", "s2", "tail_lo", "tail_hi")])


def _assert_same(a: DriftMonitor, b: DriftMonitor) -> None:
    assert _integer_state(a) == _integer_state(b)
    np.testing.assert_allclose(_float_state(a), _float_state(b), rtol=1e-9, atol=1e-6)
    ra, rb = a.report(), b.report()
    for fa, fb in zip(ra.features, rb.features, strict=True):
        assert fa.psi == fb.psi and fa.ks_statistic == fb.ks_statistic
        assert fa.js_distance == fb.js_distance and fa.ks_pvalue == fb.ks_pvalue


@SETTINGS
@given(batch=batches)
def test_batch_equals_row_by_row(profile: ReferenceProfile, batch: np.ndarray) -> None:
    whole, rows = DriftMonitor(profile), DriftMonitor(profile)
    whole.update(batch)
    for i in range(batch.shape[0]):
        rows.update(batch[i : i + 1])
    _assert_same(whole, rows)
    json.dumps(whole.report().to_dict(), allow_nan=False)


@SETTINGS
@given(batch=batches, seed=st.integers(0, 2**32 - 1))
def test_row_order_does_not_matter(profile: ReferenceProfile, batch: np.ndarray, seed: int) -> None:
    a, b = DriftMonitor(profile), DriftMonitor(profile)
    a.update(batch)
    b.update(batch[np.random.default_rng(seed).permutation(batch.shape[0])])
    _assert_same(a, b)


@SETTINGS
@given(x=batches, y=batches, z=batches)
def test_merge_is_associative_and_equals_the_joint_stream(
    profile: ReferenceProfile, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> None:
    ma, mb, mc = DriftMonitor(profile), DriftMonitor(profile), DriftMonitor(profile)
    ma.update(x)
    mb.update(y)
    mc.update(z)
    left, right = (ma + mb) + mc, ma + (mb + mc)
    _assert_same(left, right)
    joint = DriftMonitor(profile)
    joint.update(np.concatenate([x, y, z]))
    _assert_same(left, joint)
    assert ma.n_samples == x.shape[0]  # + does not modify its operands


@SETTINGS
@given(batch=batches)
def test_state_round_trips_through_json(profile: ReferenceProfile, batch: np.ndarray) -> None:
    mon = DriftMonitor(profile)
    mon.update(batch)
    state = json.loads(json.dumps(mon.state_dict(), allow_nan=False))
    back = DriftMonitor.from_state_dict(profile, state)
    assert back.state_dict() == mon.state_dict()
    assert back.report() == mon.report()


@SETTINGS
@given(ids=arrays(np.int64, st.integers(0, 60), elements=st.integers(-2, 6)), cut=st.integers(0, 60))
def test_prediction_monitor_batching_and_merge(ids: np.ndarray, cut: int) -> None:
    ref = [0.2, 0.3, 0.1, 0.4, 0.0]
    whole, a, b = PredictionDriftMonitor(ref), PredictionDriftMonitor(ref), PredictionDriftMonitor(ref)
    whole.update(ids)
    a.update(ids[:cut])
    b.update(ids[cut:])
    assert (a + b).report() == whole.report()
    back = PredictionDriftMonitor.from_state_dict(json.loads(json.dumps(whole.state_dict())))
    assert back.report() == whole.report()


def test_state_word_size_independent(profile: ReferenceProfile) -> None:
    # Everything that leaves the process is int64 / float64 in plain JSON numbers: a state written by
    # a 32-bit device reads the same. Simulate by round-tripping through text with explicit widths.
    mon = DriftMonitor(profile)
    mon.update(np.random.default_rng(21).normal(size=(1000, D)).astype(np.float32))
    state = mon.state_dict()
    assert state["version"] == 1
    for name in ("n_nan", "n_below", "n_above", "n_inf"):
        assert all(type(v) is int for v in state[name])
    for name in ("s1", "s2", "tail_lo", "tail_hi"):
        assert all(type(v) is float for v in state[name])
    np_state = json.loads(json.dumps(state))
    np_state["n_nan"] = [int(np.int32(v)) for v in np_state["n_nan"]]
    assert DriftMonitor.from_state_dict(profile, np_state).state_dict() == state


def test_bad_states_raise(profile: ReferenceProfile) -> None:
    mon = DriftMonitor(profile)
    mon.update(np.zeros((5, D)))
    good = mon.state_dict()
    for bad in (
        {**good, "version": 9},
        {**good, "profile": "sha256:00"},
        {**good, "n_nan": [1, 2]},
        {**good, "hist": [{"i": [10**6], "c": [1]}] * D},
        {**good, "s1": ["x"] * D},
        {k: v for k, v in good.items() if k != "n_rows"},
    ):
        with pytest.raises(DriftError):
            DriftMonitor.from_state_dict(profile, bad)
    other = ReferenceProfile.fit(np.ones((10, D)))
    with pytest.raises(DriftError, match="different reference profile"):
        mon + DriftMonitor(other)


# -- the guided bin look-up equals numpy.searchsorted(side="right") on adversarial inputs ---------

_raw_grid = st.one_of(
    arrays(np.float64, st.integers(1, 60), elements=st.floats(-1e6, 1e6, allow_nan=False)),
    arrays(np.float64, st.integers(1, 60), elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 3.0])),  # ties
    arrays(np.float64, st.integers(1, 60), elements=st.floats(-1e300, 1e300, allow_nan=False)),  # huge
    st.just(np.array([7.0])),  # constant feature
    arrays(np.float64, st.integers(2, 60), elements=st.floats(1.0, 1.0 + 1e-12)),  # crowded cells
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_raw_grid, extra=arrays(np.float64, st.integers(0, 50), elements=st.floats(allow_nan=True)),
       cells=st.sampled_from([1, 2, 7, 64, 4096]))
def test_guided_bins_equal_searchsorted(raw: np.ndarray, extra: np.ndarray, cells: int) -> None:
    from edgeops._native import _drift

    grid = np.unique(raw)
    x = np.concatenate([grid, np.nextafter(grid, -np.inf), np.nextafter(grid, np.inf), extra,
                        [np.inf, -np.inf, np.nan, 1e308, -1e308, 0.0, -0.0]])
    got = _drift.bucketize(grid, x, cells)
    want = np.where(np.isnan(x), -1, np.searchsorted(grid, x, side="right"))
    np.testing.assert_array_equal(got, want)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_raw_grid, extra=arrays(np.float32, st.integers(0, 50), elements=st.floats(allow_nan=True, width=32)),
       cells=st.sampled_from([1, 2, 7, 64, 4096]))
def test_float32_bins_equal_searchsorted_of_the_float64_value(raw: np.ndarray, extra: np.ndarray,
                                                             cells: int) -> None:
    # float32 input is compared with the grid rounded up to float32: the same bins as comparing the
    # exact float64 value of each float32 with the grid, including grids beyond the float32 range.
    from edgeops._native import _drift

    grid = np.unique(raw)
    with np.errstate(over="ignore"):
        g32 = grid.astype(np.float32)
        around = [np.nextafter(g32, np.float32(-np.inf)), np.nextafter(g32, np.float32(np.inf))]
    x = np.concatenate([g32, *around, extra,
                        np.array([np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 0.0, -0.0], dtype=np.float32)])
    got = _drift.bucketize(grid, x, cells)
    x64 = x.astype(np.float64)
    want = np.where(np.isnan(x64), -1, np.searchsorted(grid, x64, side="right"))
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ref=arrays(np.float64, (200, 2), elements=st.one_of(st.floats(-1e3, 1e3), st.sampled_from([0.0, 1.0]))),
       cur=arrays(np.float64, st.tuples(st.integers(0, 300), st.just(2)),
                  elements=st.one_of(st.floats(-2e3, 2e3), st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1.0]))),
       order=st.sampled_from(["C", "F"]), f32=st.booleans())
def test_fold_counts_equal_searchsorted(ref: np.ndarray, cur: np.ndarray, order: str, f32: bool) -> None:
    profile = ReferenceProfile.fit(ref, bins=5, cdf_points=16)
    if f32:
        cur = cur.astype(np.float32)
    mon = DriftMonitor(profile)
    mon.update(np.asarray(cur, order=order))
    hist = mon.state_dict()["hist"]
    for j, f in enumerate(profile.features):
        col = cur[:, j].astype(np.float64)
        col = col[~np.isnan(col)]
        want = np.bincount(np.searchsorted(f.grid, col, side="right"), minlength=f.grid.size + 1)
        got = np.zeros_like(want)
        got[np.asarray(hist[j]["i"], dtype=np.int64)] = hist[j]["c"]
        np.testing.assert_array_equal(got, want)


def test_fold_across_tiles_and_runs_equals_searchsorted() -> None:
    # More rows than one transpose tile (262,144 values / d) and many runs, row-major float32.
    rng = np.random.default_rng(22)
    profile = ReferenceProfile.fit(rng.normal(size=(5_000, 3)))
    cur = rng.normal(0.2, 1.3, size=(200_003, 3)).astype(np.float32)
    cur[::997, 1] = np.nan
    mon = DriftMonitor(profile)
    mon.update(cur)
    hist = mon.state_dict()["hist"]
    for j, f in enumerate(profile.features):
        col = cur[:, j].astype(np.float64)
        col = col[~np.isnan(col)]
        want = np.bincount(np.searchsorted(f.grid, col, side="right"), minlength=f.grid.size + 1)
        got = np.zeros_like(want)
        got[np.asarray(hist[j]["i"], dtype=np.int64)] = hist[j]["c"]
        np.testing.assert_array_equal(got, want)
        assert mon.report().features[j].mean == pytest.approx(col.mean(), rel=1e-9, abs=1e-12)


def _reference_state(profile: ReferenceProfile, cur: np.ndarray) -> dict[str, object]:
    """The window state by numpy, from its definition (docs/drift.md)."""
    hist, n_nan, n_below, n_above, n_inf, s1, tl, th = [], [], [], [], [], [], [], []
    for j, f in enumerate(profile.features):
        col = cur[:, j].astype(np.float64)
        ok = col[~np.isnan(col)]
        fin = ok[np.isfinite(ok)]
        want = np.bincount(np.searchsorted(f.grid, ok, side="right"), minlength=f.grid.size + 1)
        idx = np.flatnonzero(want)
        hist.append({"i": idx.tolist(), "c": want[idx].tolist()})
        n_nan.append(int(np.isnan(col).sum()))
        # Without finite reference values everything but +inf counts as below the (empty) range.
        lo, hi = (f.min, f.max) if f.grid.size else (np.inf, -np.inf)
        n_below.append(int((ok < lo).sum()))
        n_above.append(int((ok > hi).sum()) if f.grid.size else int((ok == np.inf).sum()))
        n_inf.append(int(np.isinf(ok).sum()))
        s1.append(float(np.sum(fin - f.mean)))
        tl.append(float(np.sum((f.min if f.grid.size else 0.0) - fin[fin < lo])))
        th.append(float(np.sum(fin[fin > hi] - f.max)) if f.grid.size else 0.0)
    return {"hist": hist, "n_nan": n_nan, "n_below": n_below, "n_above": n_above, "n_inf": n_inf,
            "s1": s1, "tail_lo": tl, "tail_hi": th}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F", "view"])
@pytest.mark.parametrize("rows", [5, 31, 4_099])
def test_fold_paths_equal_the_definition(dtype: type, order: str, rows: int) -> None:
    # Every kernel path (small batches across the features of a row or value by value, blocks of
    # contiguous columns, blocked or strip transposes of row-major tiles with ragged edges) on data
    # with crowded look-up cells, NaN, +-inf and values outside the reference range in most blocks.
    rng = np.random.default_rng(23)
    d = 11
    ref = rng.normal(size=(4_000, d))
    ref[:, 3] = np.concatenate([rng.normal(0.0, 1e-6, 3_990), [-50.0, 60.0] * 5])  # crowded centre
    ref[:, 4] = np.round(ref[:, 4], 1)  # ties
    ref[:, 5] = 2.5  # constant
    ref[:, 6] = np.nan  # no finite reference value
    profile = ReferenceProfile.fit(ref, bins=6, cdf_points=512)
    cur = rng.normal(0.3, 1.7, size=(rows, d))
    cur[:, 3] = rng.normal(0.0, 1e-6, rows)
    cur[:, 5] = rng.choice([2.5, 2.4, 2.6], rows)
    mask = rng.random(cur.shape)
    cur[mask < 0.01] = np.nan
    cur[(mask >= 0.01) & (mask < 0.015)] = np.inf
    cur[(mask >= 0.015) & (mask < 0.02)] = -np.inf
    cur[(mask >= 0.02) & (mask < 0.03)] *= 40.0
    if order == "view":  # every other column of a wider array: no stride is the element size
        wider = np.zeros((rows, 2 * d), dtype=dtype)
        wider[:, ::2] = cur
        cur = wider[:, ::2]
    else:
        cur = np.asarray(cur.astype(dtype), order=order)
    mon = DriftMonitor(profile)
    mon.update(cur)
    got = mon.state_dict()
    want = _reference_state(profile, cur)
    for key in ("hist", "n_nan", "n_below", "n_above", "n_inf"):
        assert got[key] == want[key], key
    for key in ("s1", "tail_lo", "tail_hi"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-9)
    for j, f in enumerate(profile.features):  # the NaN scratch slot is left empty
        assert mon._core.counts[j, f.grid.size + 1] == 0
    if dtype is np.float32:  # the same values as float64: the same state, bit for bit
        wide = DriftMonitor(profile)
        wide.update(np.asarray(cur.astype(np.float64), order="F" if order == "F" else "C"))
        assert wide.state_dict() == got


def _lane_sums(d: np.ndarray) -> tuple[float, float]:
    """Sums of d and d*d in the kernel's documented order: eight lanes (i mod 8), each summed in
    order, combined pairwise, then the last len % 8 values in order."""
    n8 = d.size - d.size % 8
    lanes = d[:n8].reshape(-1, 8)
    out = []
    for v, tail in ((lanes, d[n8:]), (lanes * lanes, d[n8:] * d[n8:])):
        a = np.cumsum(v, axis=0)[-1] if n8 else np.zeros(8)  # cumsum: strictly in order
        s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
        s = s + (np.cumsum(tail)[-1] if tail.size else 0.0)
        out.append(float(s))
    return out[0], out[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moment_sums_follow_the_documented_order(dtype: type) -> None:
    # Bit for bit: the order is fixed in the source, so every build (AVX2 clone, baseline x86-64,
    # NEON) gives these same sums.
    rng = np.random.default_rng(29)
    profile = ReferenceProfile.fit(rng.normal(size=(5_000, 1)))
    cur = rng.normal(0.5, 2.0, size=(2 * 2048 + 13, 1)).astype(dtype)
    mon = DriftMonitor(profile)
    mon.update(cur)
    sh = profile.features[0].mean
    want1 = want2 = 0.0
    for b0 in range(0, cur.shape[0], 2048):
        s1, s2 = _lane_sums(cur[b0 : b0 + 2048, 0].astype(np.float64) - sh)
        want1, want2 = want1 + s1, want2 + s2
    st = mon.state_dict()
    assert st["s1"][0] == want1 and st["s2"][0] == want2
