"""Drift statistics for models on devices: reference profiles, windowed monitors, change detectors.

The public classes live here; every per-sample loop runs in the private compiled core
(:mod:`edgeops._native._drift`). See docs/drift.md for the definitions, the defaults and the error
bounds of the binned statistics.

* :class:`ReferenceProfile` summarises reference (training / calibration) data: per feature the
  quantile edges of the PSI bins and their reference counts, a fine grid of reference quantiles with
  the exact reference CDF on it (for KS and Wasserstein), moments and range. It serialises to a
  versioned JSON-safe dict and travels inside bundles.
* :class:`DriftMonitor` folds batches into per-feature histograms over the reference grid plus
  running moments, NaN and out-of-range counts, and reports PSI, Jensen-Shannon distance, binned KS
  (with an asymptotic p-value and a computed error bound), Wasserstein-1, mean shift, NaN rate and
  out-of-range rate per feature. Monitors over the same profile merge with ``+``.
* :class:`PredictionDriftMonitor` compares predicted-class frequencies with reference frequencies.
* :class:`PageHinkley` and :class:`Cusum` are streaming change detectors over a scalar stream.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgeops._native import _drift as _core
from edgeops.errors import DriftError

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_CDF_POINTS",
    "PROFILE_VERSION",
    "PSI_EPSILON",
    "STATE_VERSION",
    "Cusum",
    "DriftMonitor",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "PageHinkley",
    "PredictionDriftMonitor",
    "PredictionDriftReport",
    "ReferenceProfile",
]

PROFILE_VERSION = 1
"""Version of :meth:`ReferenceProfile.to_dict`."""
STATE_VERSION = 1
"""Version of the monitors' ``state_dict``."""
PSI_EPSILON = 1e-4
"""Additive smoothing of PSI: each bin fraction p becomes (p + eps) / (1 + B * eps)."""
DEFAULT_BINS = 10
"""Quantile bins of PSI and Jensen-Shannon."""
DEFAULT_CDF_POINTS = 2048
"""Target size of the fine reference grid used by KS and Wasserstein."""
# Look-up table cells per grid point, per feature (clipped): with 8, a grid of quantiles of a smooth
# density has at most one point per cell almost everywhere, the fold's branch-free fast path.
_LUT_CELLS_PER_POINT = 8
_LUT_MIN_CELLS = 64
_LUT_MAX_CELLS = 65536
_PROFILE_KIND = "edgeops.drift.profile"
_MONITOR_KIND = "edgeops.drift.monitor"
_PREDICTION_KIND = "edgeops.drift.prediction_monitor"

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# ------------------------------------------------------------------------------------------------
# Thresholds and reports
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature counts as drifted. A rule fires at ``>=`` its threshold; ``math.inf`` disables it.

    The defaults flag a mean shift of about a third of a reference standard deviation (PSI 0.1 on
    10 quantile bins) and leave a 0.1 sigma shift (PSI ~0.008, JS ~0.03) alone. KS needs both a large
    enough statistic and a small p-value, because with thousands of samples the p-value alone flags
    shifts too small to matter. Nothing is flagged below ``min_samples`` values in the window: the
    PSI of an undrifted window of n samples is about (bins - 1) / n by chance alone.
    """

    psi: float = 0.1
    """Population stability index on the quantile bins."""
    js_distance: float = 0.1
    """Jensen-Shannon distance (natural log, range 0 to sqrt(ln 2) ~ 0.833)."""
    ks_statistic: float = 0.1
    """Binned two-sample KS statistic; fires only together with ``ks_pvalue``."""
    ks_pvalue: float = 0.01
    """KS fires when the statistic is >= ``ks_statistic`` and the p-value is <= this."""
    wasserstein_sd: float = 0.3
    """Wasserstein-1 distance in reference standard deviations."""
    mean_shift_sd: float = 0.3
    """Absolute mean shift in reference standard deviations."""
    nan_rate_increase: float = 0.05
    """NaN rate of the window minus the NaN rate of the reference."""
    out_of_range_rate: float = 0.05
    """Share of non-NaN values outside the reference [min, max]."""
    min_samples: int = 500
    """Fewer values than this in the window: no feature is flagged."""
    drift_share: float = 0.5
    """The report's ``dataset_drift`` is true when at least this share of features drifted."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                raise DriftError(f"threshold {name} must be a number, got {value!r}")
            if value < 0:
                raise DriftError(f"threshold {name} must be >= 0, got {value!r}")

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-safe dict; disabled (infinite) thresholds become None."""
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class FeatureDrift:
    """Drift statistics of one feature over one window. Empty window: all zeros, p-value 1."""

    index: int
    psi: float
    js_distance: float
    ks_statistic: float
    ks_pvalue: float
    wasserstein: float
    mean_shift_sd: float
    nan_rate: float
    out_of_range_rate: float
    n: int = 0
    """Non-NaN values folded for this feature."""
    ks_error_bound: float = 0.0
    """The two-sample KS statistic of the raw streams lies in [ks_statistic, ks_statistic + bound]."""
    wasserstein_error_bound: float = 0.0
    """|Wasserstein-1 of the raw streams - wasserstein| <= this."""
    wasserstein_sd: float = 0.0
    """``wasserstein`` divided by the reference standard deviation (by 1 if that is 0)."""
    mean: float = 0.0
    std: float = 0.0
    drifted: bool = False
    reasons: tuple[str, ...] = ()
    """Names of the threshold rules that fired."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


@dataclass(frozen=True)
class DriftReport:
    """Per-feature drift of one window plus a summary.

    ``overall_score`` is the share of features flagged as drifted (0 to 1; 0 for an empty window);
    ``dataset_drift`` is ``overall_score >= thresholds.drift_share`` with at least one drifted feature.
    """

    n_samples: int
    overall_score: float
    drifted_features: list[int]
    features: list[FeatureDrift]
    dataset_drift: bool = False
    max_psi: float = 0.0
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples,
            "overall_score": self.overall_score,
            "dataset_drift": self.dataset_drift,
            "max_psi": self.max_psi,
            "drifted_features": list(self.drifted_features),
            "features": [f.to_dict() for f in self.features],
            "thresholds": self.thresholds.to_dict(),
        }


# ------------------------------------------------------------------------------------------------
# Reference profile
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FeatureProfile:
    """Reference summary of one feature (finite values only; NaN and +-inf are counted apart)."""

    n_rows: int
    n_nan: int
    n_inf: int
    mean: float
    std: float
    min: float
    max: float
    edges: FloatArray
    """Interior PSI bin edges (strictly increasing, all > min); bins are [e_i, e_i+1)."""
    bin_counts: IntArray
    """Reference counts per PSI bin (len(edges) + 1)."""
    grid: FloatArray
    """Fine grid of reference quantiles (strictly increasing, contains min, max and the edges)."""
    grid_lt: IntArray
    """Reference counts strictly below each grid point."""

    @property
    def n_finite(self) -> int:
        return self.n_rows - self.n_nan - self.n_inf

    @property
    def expected_fractions(self) -> FloatArray:
        total = int(self.bin_counts.sum())
        return self.bin_counts / total if total else np.zeros(len(self.bin_counts))

    @property
    def nan_rate(self) -> float:
        return self.n_nan / self.n_rows if self.n_rows else 0.0


def _check_2d_float(X: object, what: str) -> np.ndarray:
    if not isinstance(X, np.ndarray):
        raise DriftError(f"{what} must be a numpy.ndarray, got {type(X).__name__}")
    if X.ndim != 2:
        raise DriftError(f"{what} must be 2-D (rows, features), got {X.ndim}-D shape {X.shape}")
    if X.dtype.kind not in "fiu" or X.dtype.itemsize > 8:
        raise DriftError(f"{what} must hold real numbers, got dtype {X.dtype}")
    return X


def _fit_feature(col: FloatArray, bins: int, cdf_points: int) -> FeatureProfile:
    nan = np.isnan(col)
    finite = np.isfinite(col)
    n_nan = int(nan.sum())
    n_inf = int(col.size - n_nan - finite.sum())
    v = np.sort(col[finite])
    m = int(v.size)
    if m == 0:
        empty_f = np.zeros(0, dtype=np.float64)
        empty_i = np.zeros(0, dtype=np.int64)
        return FeatureProfile(col.size, n_nan, n_inf, 0.0, 0.0, 0.0, 0.0, empty_f,
                              np.zeros(1, dtype=np.int64), empty_f, empty_i)
    # Quantiles as order statistics, so every edge is a reference value and no PSI bin is empty.
    coarse_pos = (np.arange(1, bins, dtype=np.int64) * m) // bins
    edges = np.unique(v[coarse_pos])
    edges = edges[edges > v[0]]
    fine_pos = (np.arange(cdf_points, dtype=np.int64) * m) // cdf_points
    grid = np.unique(np.concatenate([v[fine_pos], v[-1:], edges]))
    grid_lt = np.searchsorted(v, grid, side="left").astype(np.int64)
    edge_lt = np.searchsorted(v, edges, side="left").astype(np.int64)
    bin_counts = np.diff(np.concatenate([[0], edge_lt, [m]])).astype(np.int64)
    mean = float(np.mean(v))
    std = float(np.sqrt(np.mean((v - mean) ** 2)))
    return FeatureProfile(col.size, n_nan, n_inf, mean, std, float(v[0]), float(v[-1]),
                          edges.astype(np.float64), bin_counts, grid.astype(np.float64), grid_lt)


def _float_list(a: FloatArray) -> list[float]:
    return [float(x) for x in a.tolist()]


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DriftError(f"{what} must be an integer, got {value!r}")
    return value


def _as_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DriftError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _as_float_array(value: object, what: str) -> FloatArray:
    if not isinstance(value, list):
        raise DriftError(f"{what} must be a list of numbers")
    arr = np.array([_as_float(x, what) for x in value], dtype=np.float64)
    return arr


def _as_int_array(value: object, what: str) -> IntArray:
    if not isinstance(value, list):
        raise DriftError(f"{what} must be a list of integers")
    ints = [_as_int(x, what) for x in value]
    if any(x < 0 or x >= 2**63 for x in ints):
        raise DriftError(f"{what} must hold non-negative int64 values")
    return np.array(ints, dtype=np.int64)


class ReferenceProfile:
    """Per-feature reference summary that drift is measured against.

    Build it with :meth:`fit`; ship it with :meth:`to_dict` / :meth:`from_dict` (versioned JSON,
    int64 counts and float64 values, no pickle). Profiles compare equal when their dicts do.
    """

    def __init__(self, features: Sequence[FeatureProfile], bins: int, cdf_points: int) -> None:
        self.features: tuple[FeatureProfile, ...] = tuple(features)
        self.bins = bins
        self.cdf_points = cdf_points
        self._fingerprint: str | None = None
        self._template: Any = None

    @property
    def n_features(self) -> int:
        return len(self.features)

    @classmethod
    def fit(cls, X: np.ndarray, bins: int = DEFAULT_BINS,
            cdf_points: int = DEFAULT_CDF_POINTS) -> ReferenceProfile:
        """Profile reference data ``X`` of shape (rows, features); NaN and +-inf are allowed.

        ``bins`` quantile bins for PSI / JS (fewer when ties merge quantiles; one for a constant
        feature); ``cdf_points`` (16 to 8192) fine quantiles for KS and Wasserstein.
        """
        X = _check_2d_float(X, "reference data")
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 1000:
            raise DriftError(f"bins must be an integer in [1, 1000], got {bins!r}")
        if isinstance(cdf_points, bool) or not isinstance(cdf_points, int) or not 16 <= cdf_points <= 8192:
            raise DriftError(f"cdf_points must be an integer in [16, 8192], got {cdf_points!r}")
        if X.shape[1] == 0:
            raise DriftError("reference data has no features")
        X64 = np.asarray(X, dtype=np.float64)
        feats = [_fit_feature(np.ascontiguousarray(X64[:, j]), bins, cdf_points) for j in range(X.shape[1])]
        return cls(feats, bins, cdf_points)

    # -- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Versioned JSON-safe dict (``json.dumps`` works; no NaN or infinity inside)."""
        feats = []
        for f in self.features:
            empty = f.n_finite == 0
            feats.append({
                "n_rows": f.n_rows,
                "n_nan": f.n_nan,
                "n_inf": f.n_inf,
                "mean": f.mean,
                "std": f.std,
                "min": None if empty else f.min,
                "max": None if empty else f.max,
                "edges": _float_list(f.edges),
                "bin_counts": [int(x) for x in f.bin_counts.tolist()],
                "grid": _float_list(f.grid),
                "grid_lt": [int(x) for x in f.grid_lt.tolist()],
            })
        return {
            "version": PROFILE_VERSION,
            "kind": _PROFILE_KIND,
            "bins": self.bins,
            "cdf_points": self.cdf_points,
            "n_features": self.n_features,
            "features": feats,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        """Inverse of :meth:`to_dict`; raises DriftError on anything malformed or of another version."""
        if not isinstance(d, Mapping):
            raise DriftError("reference profile must be a dict")
        if d.get("version") != PROFILE_VERSION:
            raise DriftError(f"unsupported reference profile version {d.get('version')!r} "
                             f"(this build reads version {PROFILE_VERSION})")
        if d.get("kind") != _PROFILE_KIND:
            raise DriftError(f"not a reference profile: kind {d.get('kind')!r}")
        bins = _as_int(d.get("bins"), "bins")
        cdf_points = _as_int(d.get("cdf_points"), "cdf_points")
        raw = d.get("features")
        if not isinstance(raw, list) or not raw:
            raise DriftError("reference profile has no features")
        if d.get("n_features") != len(raw):
            raise DriftError("reference profile n_features does not match its feature list")
        feats = []
        for j, fd in enumerate(raw):
            if not isinstance(fd, Mapping):
                raise DriftError(f"feature {j} of the reference profile is not a dict")
            try:
                feats.append(cls._feature_from_dict(fd))
            except KeyError as exc:
                raise DriftError(f"feature {j} of the reference profile lacks {exc}") from None
            except DriftError as exc:
                raise DriftError(f"feature {j} of the reference profile: {exc}") from None
        return cls(feats, bins, cdf_points)

    @staticmethod
    def _feature_from_dict(fd: Mapping[str, Any]) -> FeatureProfile:
        n_rows = _as_int(fd["n_rows"], "n_rows")
        n_nan = _as_int(fd["n_nan"], "n_nan")
        n_inf = _as_int(fd["n_inf"], "n_inf")
        if min(n_rows, n_nan, n_inf) < 0 or n_nan + n_inf > n_rows:
            raise DriftError("inconsistent row counts")
        m = n_rows - n_nan - n_inf
        edges = _as_float_array(fd["edges"], "edges")
        bin_counts = _as_int_array(fd["bin_counts"], "bin_counts")
        grid = _as_float_array(fd["grid"], "grid")
        grid_lt = _as_int_array(fd["grid_lt"], "grid_lt")
        mean = _as_float(fd["mean"], "mean")
        std = _as_float(fd["std"], "std")
        if m == 0:
            if grid.size or edges.size or grid_lt.size or bin_counts.tolist() != [0]:
                raise DriftError("a feature without reference values must have empty tables")
            return FeatureProfile(n_rows, n_nan, n_inf, 0.0, 0.0, 0.0, 0.0, edges, bin_counts, grid, grid_lt)
        lo = _as_float(fd["min"], "min")
        hi = _as_float(fd["max"], "max")
        if grid.size == 0 or grid[0] != lo or grid[-1] != hi or np.any(np.diff(grid) <= 0):
            raise DriftError("grid must be strictly increasing from min to max")
        if grid_lt.size != grid.size or grid_lt[0] != 0 or np.any(np.diff(grid_lt) <= 0) \
                or grid_lt[-1] >= m:
            raise DriftError("grid_lt must be increasing counts in [0, n_finite)")
        if bin_counts.size != edges.size + 1 or int(bin_counts.sum()) != m or np.any(bin_counts <= 0):
            raise DriftError("bin_counts must be positive, one more than edges, summing to n_finite")
        if edges.size and (np.any(np.diff(edges) <= 0) or edges[0] <= lo
                           or not np.all(np.isin(edges, grid))):
            raise DriftError("edges must be increasing grid points above min")
        if std < 0:
            raise DriftError("std must be >= 0")
        return FeatureProfile(n_rows, n_nan, n_inf, mean, std, lo, hi, edges, bin_counts, grid, grid_lt)

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of :meth:`to_dict`; identifies the profile in states."""
        if self._fingerprint is None:
            blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
            self._fingerprint = "sha256:" + hashlib.sha256(blob).hexdigest()
        return self._fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReferenceProfile):
            return NotImplemented
        return self is other or self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return (f"ReferenceProfile(n_features={self.n_features}, bins={self.bins}, "
                f"cdf_points={self.cdf_points})")

    # -- compiled tables -------------------------------------------------------------------------

    def _new_core(self) -> Any:
        """A fresh compiled core (tables built once per profile and shared)."""
        if self._template is None:
            self._template = self._build_core()
        return self._template.copy()

    def _build_core(self) -> Any:
        d = self.n_features
        ks = np.array([f.grid.size for f in self.features], dtype=np.int64)
        kstride = int(ks.max()) + 2  # two +inf pads after the longest grid
        bmax = max(f.bin_counts.size for f in self.features)
        grid = np.full((d, kstride), np.inf)
        ref_lt = np.zeros((d, kstride), dtype=np.int64)
        coarse = np.zeros((d, kstride + 1), dtype=np.int32)
        ref_bins = np.zeros((d, bmax), dtype=np.int64)
        nbins = np.zeros(d, dtype=np.int64)
        ref_n = np.zeros(d, dtype=np.int64)
        shift = np.zeros(d)
        for j, f in enumerate(self.features):
            K = f.grid.size
            grid[j, :K] = f.grid
            ref_lt[j, :K] = f.grid_lt
            ref_lt[j, K:] = f.n_finite
            pos = np.searchsorted(f.grid, f.edges)
            coarse[j, : K + 1] = np.searchsorted(pos, np.arange(K + 1), side="left")
            ref_bins[j, : f.bin_counts.size] = f.bin_counts
            nbins[j] = f.bin_counts.size
            ref_n[j] = f.n_finite
            shift[j] = f.mean
        cells = np.clip(_LUT_CELLS_PER_POINT * ks, _LUT_MIN_CELLS, _LUT_MAX_CELLS)
        return _core._Core(grid, ks, shift, coarse, nbins, ref_bins, ref_lt, ref_n, cells)


# ------------------------------------------------------------------------------------------------
# Feature drift monitor
# ------------------------------------------------------------------------------------------------

def _fired_rules(f: FeatureDrift, th: DriftThresholds, n_rows: int, ref_nan_rate: float) -> tuple[str, ...]:
    """Names of the threshold rules a feature's statistics fire (see DriftThresholds)."""
    reasons: list[str] = []
    if f.n >= th.min_samples:
        if f.psi >= th.psi:
            reasons.append("psi")
        if f.js_distance >= th.js_distance:
            reasons.append("js_distance")
        if f.ks_statistic >= th.ks_statistic and f.ks_pvalue <= th.ks_pvalue:
            reasons.append("ks")
        if f.wasserstein_sd >= th.wasserstein_sd:
            reasons.append("wasserstein_sd")
        if abs(f.mean_shift_sd) >= th.mean_shift_sd:
            reasons.append("mean_shift_sd")
        if f.out_of_range_rate >= th.out_of_range_rate:
            reasons.append("out_of_range_rate")
    if n_rows >= th.min_samples and f.nan_rate - ref_nan_rate >= th.nan_rate_increase:
        reasons.append("nan_rate_increase")
    return tuple(reasons)


_STATE_I64 = ("n_nan", "n_below", "n_above", "n_inf")
_STATE_F64 = ("s1", "s2", "tail_lo", "tail_hi")


class DriftMonitor:
    """Windowed drift of a stream of feature batches against a :class:`ReferenceProfile`.

    ``update`` costs O(rows x features) in compiled code and keeps O(features x grid) state;
    ``report`` may be called at any time (before any update it returns zeros, p-values of 1 and no
    drifted feature); ``reset`` starts a new window. ``a + b`` is the monitor over both streams.
    """

    def __init__(self, profile: ReferenceProfile, thresholds: DriftThresholds | None = None) -> None:
        if not isinstance(profile, ReferenceProfile):
            raise DriftError(f"DriftMonitor needs a ReferenceProfile, got {type(profile).__name__}")
        self.profile = profile
        self.thresholds = thresholds if thresholds is not None else DriftThresholds()
        self._core = profile._new_core()

    @property
    def n_features(self) -> int:
        return self.profile.n_features

    @property
    def n_samples(self) -> int:
        """Rows folded since the last reset."""
        return int(self._core.n_rows)

    def update(self, batch: np.ndarray) -> None:
        """Fold a (rows, n_features) float32 or float64 batch; rows may be 0 or 1.

        NaN counts towards the NaN rate only; values outside the reference range count as out of
        range (and fall in the outer bins); +-inf also stays out of the moments and Wasserstein tails.
        """
        self._core.update(batch)

    def reset(self) -> None:
        """Start a new window."""
        self._core.reset()

    def copy(self) -> DriftMonitor:
        new = DriftMonitor.__new__(DriftMonitor)
        new.profile = self.profile
        new.thresholds = self.thresholds
        new._core = self._core.copy()
        return new

    def __add__(self, other: DriftMonitor) -> DriftMonitor:
        if not isinstance(other, DriftMonitor):
            return NotImplemented
        if other.profile != self.profile:
            raise DriftError("cannot merge drift monitors built on different reference profiles")
        new = self.copy()
        new._core.merge(other._core)
        return new

    def __iadd__(self, other: DriftMonitor) -> DriftMonitor:
        if not isinstance(other, DriftMonitor):
            return NotImplemented
        if other.profile != self.profile:
            raise DriftError("cannot merge drift monitors built on different reference profiles")
        self._core.merge(other._core)
        return self

    # -- report ----------------------------------------------------------------------------------

    def report(self) -> DriftReport:
        """Statistics of the current window (see docs/drift.md for definitions and bounds)."""
        core = self._core
        th = self.thresholds
        stats = core.stats(PSI_EPSILON)
        n_rows = int(core.n_rows)
        n_nan = core.n_nan
        n_oor = core.n_below + core.n_above
        features: list[FeatureDrift] = []
        drifted: list[int] = []
        for j, fp in enumerate(self.profile.features):
            s = stats[j]
            n = int(s[_core.STAT_N])
            n_mom = int(s[_core.STAT_N_MOMENTS])
            sd_ref = fp.std if fp.std > 0 else 1.0
            mean_shift = (float(s[_core.STAT_MEAN]) - fp.mean) / sd_ref if n_mom and fp.n_finite else 0.0
            nan_rate = int(n_nan[j]) / n_rows if n_rows else 0.0
            oor = int(n_oor[j]) / n if n else 0.0
            w1 = float(s[_core.STAT_W1])
            fd = FeatureDrift(
                index=j,
                psi=float(s[_core.STAT_PSI]),
                js_distance=float(s[_core.STAT_JS]),
                ks_statistic=float(s[_core.STAT_KS]),
                ks_pvalue=float(s[_core.STAT_KS_P]),
                wasserstein=w1,
                mean_shift_sd=mean_shift,
                nan_rate=nan_rate,
                out_of_range_rate=oor,
                n=n,
                ks_error_bound=float(s[_core.STAT_KS_BOUND]),
                wasserstein_error_bound=float(s[_core.STAT_W1_BOUND]),
                wasserstein_sd=w1 / sd_ref,
                mean=float(s[_core.STAT_MEAN]),
                std=float(s[_core.STAT_STD]),
            )
            reasons = _fired_rules(fd, th, n_rows, fp.nan_rate)
            if reasons:
                drifted.append(j)
                fd = replace(fd, drifted=True, reasons=reasons)
            features.append(fd)
        score = len(drifted) / len(features) if features else 0.0
        return DriftReport(
            n_samples=n_rows,
            overall_score=score,
            drifted_features=drifted,
            features=features,
            dataset_drift=bool(drifted) and score >= th.drift_share,
            max_psi=max((f.psi for f in features), default=0.0),
            thresholds=th,
        )

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Versioned JSON-safe window state (int64 counts, float64 sums; sparse histograms)."""
        core = self._core
        counts = core.counts
        hist = []
        for j in range(self.n_features):
            idx = np.flatnonzero(counts[j])
            hist.append({"i": [int(x) for x in idx.tolist()],
                         "c": [int(x) for x in counts[j, idx].tolist()]})
        out: dict[str, Any] = {
            "version": STATE_VERSION,
            "kind": _MONITOR_KIND,
            "profile": self.profile.fingerprint,
            "n_features": self.n_features,
            "n_rows": int(core.n_rows),
            "hist": hist,
        }
        for name in _STATE_I64:
            out[name] = [int(x) for x in getattr(core, name).tolist()]
        for name in _STATE_F64:
            out[name] = _float_list(getattr(core, name))
        return out

    @classmethod
    def from_state_dict(cls, profile: ReferenceProfile, d: Mapping[str, Any],
                        thresholds: DriftThresholds | None = None) -> DriftMonitor:
        """Rebuild a monitor from :meth:`state_dict` over the same ``profile``."""
        if not isinstance(d, Mapping):
            raise DriftError("drift monitor state must be a dict")
        if d.get("version") != STATE_VERSION:
            raise DriftError(f"unsupported drift monitor state version {d.get('version')!r} "
                             f"(this build reads version {STATE_VERSION})")
        if d.get("kind") != _MONITOR_KIND:
            raise DriftError(f"not a drift monitor state: kind {d.get('kind')!r}")
        mon = cls(profile, thresholds)
        if d.get("profile") != profile.fingerprint:
            raise DriftError("drift monitor state was made with a different reference profile")
        core = mon._core
        dd = profile.n_features
        try:
            if d["n_features"] != dd:
                raise DriftError("feature count does not match the profile")
            n_rows = _as_int(d["n_rows"], "n_rows")
            if n_rows < 0:
                raise DriftError("n_rows must be >= 0")
            hist = d["hist"]
            if not isinstance(hist, list) or len(hist) != dd:
                raise DriftError("hist must have one entry per feature")
            for j, h in enumerate(hist):
                idx = _as_int_array(h["i"], "hist index")
                cnt = _as_int_array(h["c"], "hist count")
                if idx.size != cnt.size or np.any(idx > profile.features[j].grid.size):
                    raise DriftError(f"histogram of feature {j} does not fit the profile")
                core.counts[j, idx] = cnt
            for name in _STATE_I64:
                arr = _as_int_array(d[name], name)
                if arr.size != dd:
                    raise DriftError(f"{name} must have one value per feature")
                getattr(core, name)[:] = arr
            for name in _STATE_F64:
                farr = _as_float_array(d[name], name)
                if farr.size != dd:
                    raise DriftError(f"{name} must have one value per feature")
                getattr(core, name)[:] = farr
        except KeyError as exc:
            raise DriftError(f"drift monitor state lacks {exc}") from None
        except TypeError as exc:
            raise DriftError(f"malformed drift monitor state: {exc}") from None
        core.n_rows = n_rows
        return mon


# ------------------------------------------------------------------------------------------------
# Classifier outputs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionDriftReport:
    """Drift of the predicted-class distribution. Empty window: zeros and ``drifted`` false."""

    n_samples: int
    psi: float
    js_distance: float
    total_variation: float
    unknown_rate: float
    """Share of class ids outside [0, n_classes)."""
    class_freq: list[float]
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PredictionDriftMonitor:
    """Predicted-class frequencies against reference class frequencies (PSI, JS, total variation).

    Thresholds: ``psi`` and ``js_distance`` of :class:`DriftThresholds`, over at least
    ``min_samples`` predictions.
    """

    def __init__(self, reference_class_freq: Sequence[float] | np.ndarray,
                 thresholds: DriftThresholds | None = None) -> None:
        ref = np.asarray(reference_class_freq, dtype=np.float64)
        if ref.ndim != 1 or ref.size < 1:
            raise DriftError("reference_class_freq must be a non-empty 1-D sequence")
        if not np.all(np.isfinite(ref)) or np.any(ref < 0) or ref.sum() <= 0:
            raise DriftError("reference_class_freq must be finite, non-negative and not all zero")
        self.reference = ref / ref.sum()
        self.thresholds = thresholds if thresholds is not None else DriftThresholds()
        self._counts = np.zeros(ref.size, dtype=np.int64)
        self._unknown = 0

    @property
    def n_classes(self) -> int:
        return int(self.reference.size)

    def update(self, class_ids: np.ndarray | Sequence[int]) -> None:
        """Count a 1-D array of predicted class ids (any integer dtype)."""
        arr = np.asarray(class_ids)
        if arr.ndim != 1:
            raise DriftError(f"class ids must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            return
        if arr.dtype.kind not in "iu":
            raise DriftError(f"class ids must be integers, got dtype {arr.dtype}")
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
            arr = np.minimum(arr, np.uint64(2**62))
        self._unknown += _core.class_counts(np.ascontiguousarray(arr, dtype=np.int64), self._counts)

    def reset(self) -> None:
        self._counts[:] = 0
        self._unknown = 0

    def _compatible(self, other: PredictionDriftMonitor) -> None:
        if not np.array_equal(self.reference, other.reference):
            raise DriftError("cannot merge prediction monitors with different reference frequencies")

    def __add__(self, other: PredictionDriftMonitor) -> PredictionDriftMonitor:
        if not isinstance(other, PredictionDriftMonitor):
            return NotImplemented
        self._compatible(other)
        new = PredictionDriftMonitor(self.reference, self.thresholds)
        new._counts = self._counts + other._counts
        new._unknown = self._unknown + other._unknown
        return new

    def report(self) -> PredictionDriftReport:
        known = int(self._counts.sum())
        total = known + self._unknown
        if known == 0:
            return PredictionDriftReport(total, 0.0, 0.0, 0.0, 1.0 if total else 0.0,
                                         [0.0] * self.n_classes, False)
        cur = self._counts / known
        ref = self.reference
        C = ref.size
        a = (cur + PSI_EPSILON) / (1 + C * PSI_EPSILON)
        e = (ref + PSI_EPSILON) / (1 + C * PSI_EPSILON)
        psi = float(np.sum((a - e) * np.log(a / e)))
        mix = 0.5 * (cur + ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = np.where(cur > 0, cur * np.log(cur / mix), 0.0)
            t2 = np.where(ref > 0, ref * np.log(ref / mix), 0.0)
        js = float(np.sqrt(max(0.5 * float(t1.sum() + t2.sum()), 0.0)))
        tv = float(0.5 * np.abs(cur - ref).sum())
        th = self.thresholds
        drifted = total >= th.min_samples and (psi >= th.psi or js >= th.js_distance)
        return PredictionDriftReport(total, psi, js, tv, self._unknown / total,
                                     [float(x) for x in cur.tolist()], bool(drifted))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "kind": _PREDICTION_KIND,
            "reference": _float_list(self.reference),
            "counts": [int(x) for x in self._counts.tolist()],
            "unknown": int(self._unknown),
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any],
                        thresholds: DriftThresholds | None = None) -> PredictionDriftMonitor:
        if not isinstance(d, Mapping) or d.get("version") != STATE_VERSION \
                or d.get("kind") != _PREDICTION_KIND:
            raise DriftError("not a version-1 prediction drift monitor state")
        try:
            mon = cls(_as_float_array(d["reference"], "reference"), thresholds)
            counts = _as_int_array(d["counts"], "counts")
            unknown = _as_int(d["unknown"], "unknown")
        except KeyError as exc:
            raise DriftError(f"prediction drift state lacks {exc}") from None
        if counts.size != mon.n_classes or unknown < 0:
            raise DriftError("prediction drift state counts do not match its reference")
        mon._counts = counts
        mon._unknown = unknown
        return mon


# ------------------------------------------------------------------------------------------------
# Streaming change detectors
# ------------------------------------------------------------------------------------------------


def _as_stream(xs: object) -> npt.NDArray[np.float64]:
    arr = np.asarray(xs)
    if arr.ndim != 1:
        raise DriftError(f"update_many needs a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise DriftError(f"update_many needs real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float64)


class _StreamDetector:
    """The verb set every streaming change detector shares; the compiled core (``_c``) does the work."""

    _c: Any

    @property
    def first_alarm(self) -> int:
        """Index (in the last ``update_many`` batch) of its first alarm, or -1."""
        return int(self._c.first_alarm)

    def update(self, x: float) -> bool:
        """Feed one sample; True when it raised an alarm."""
        return bool(self._c.update(x))

    def update_many(self, xs: np.ndarray | Sequence[float]) -> int:
        """Feed a 1-D batch in order; returns the number of alarms (see :attr:`first_alarm`)."""
        return int(self._c.update_many(_as_stream(xs)))

    def get(self) -> float:
        """Current test statistic (0.0 right after construction, reset or an alarm)."""
        return float(self._c.get())

    def reset(self) -> None:
        self._c.reset()


class PageHinkley(_StreamDetector):
    """Page-Hinkley test for a change in the mean of a scalar stream (e.g. prediction confidence).

    With x_bar the running mean since the last alarm, ``s_up = alpha * s_up + (x - x_bar - delta)``
    and ``s_dn = alpha * s_dn + (x - x_bar + delta)``. The test statistic :meth:`get` is
    ``max(s_up - min(s_up), max(s_dn) - s_dn)`` (only the side(s) chosen by ``mode``); an alarm is
    raised when it exceeds ``threshold`` after at least ``min_instances`` samples, and the detector
    then restarts. Before any sample ``get()`` is 0.0. NaN samples are skipped.
    """

    def __init__(self, delta: float = 0.005, threshold: float = 50.0, *, alpha: float = 1.0,
                 min_instances: int = 30, mode: Literal["up", "down", "both"] = "both") -> None:
        if mode not in ("up", "down", "both"):
            raise DriftError(f"mode must be 'up', 'down' or 'both', got {mode!r}")
        if not (delta >= 0 and threshold > 0 and 0 < alpha <= 1 and min_instances >= 1):
            raise DriftError("need delta >= 0, threshold > 0, 0 < alpha <= 1, min_instances >= 1")
        self.mode = mode
        self._c = _core._PageHinkley(float(delta), float(threshold), float(alpha), int(min_instances),
                                     mode != "down", mode != "up")

    @property
    def delta(self) -> float:
        return float(self._c.delta)

    @property
    def threshold(self) -> float:
        return float(self._c.threshold)


class Cusum(_StreamDetector):
    """Two-sided tabular CUSUM for a shift of a scalar stream's mean away from ``target``.

    ``s_hi = max(0, s_hi + x - target - slack)``, ``s_lo = max(0, s_lo + target - slack - x)``; an
    alarm is raised when either exceeds ``threshold``, and both restart from 0. Without ``target``
    the mean of the first ``warmup`` samples is used (no alarm during warm-up; ``reset`` forgets
    it). :meth:`get` is ``max(s_hi, s_lo)``, 0.0 before any sample. NaN samples are skipped.
    """

    def __init__(self, target: float | None = None, slack: float = 0.05, threshold: float = 1.0, *,
                 warmup: int = 30) -> None:
        if not (slack >= 0 and threshold > 0 and warmup >= 1):
            raise DriftError("need slack >= 0, threshold > 0, warmup >= 1")
        if target is not None and not math.isfinite(target):
            raise DriftError("target must be finite")
        self._c = _core._Cusum(0.0 if target is None else float(target), target is not None,
                               float(slack), float(threshold), int(warmup))

    @property
    def target(self) -> float | None:
        return float(self._c.target) if self._c.has_target else None


