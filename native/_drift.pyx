# cython: language_level=3
"""Private compiled kernels of the drift core. The public API is :mod:`edgeops.drift`.

Everything per sample happens here, in ``nogil`` loops over typed memoryviews; Python only
validates arguments and shapes the results. State is kept in int64 / float64 arrays owned by the
Python-level objects, so merging and serialising never depend on the machine's word size.

Binning. Each feature has a sorted grid ``g[0] < ... < g[K-1]`` of reference values (fine
quantiles, the coarse PSI edges among them). A value ``x`` goes to fine bin ``#(g <= x)`` in
``0..K``. The per-value work is in C (native/src/fold.c): a uniform cell table over
``[g[0], g[K-1]]`` gives each cell's first grid point and the one point inside it, so a bin is one
cell computation, two table reads and one comparison, branch-free and vectorised.
"""

cimport cython
from libc.math cimport INFINITY, M_PI, exp, fabs, log, sqrt
from libc.stdlib cimport free, malloc

from cpython.buffer cimport PyBUF_RECORDS_RO, PyBuffer_Release, PyObject_GetBuffer

from _types cimport f64_t, i32_t, i64_t, real_t

cdef extern from "src/fold.h" nogil:
    enum: EDF_BLOCK
    ctypedef struct edf_tab32:
        const float* keys
        const i32_t* base
        const float* thr
        i64_t L
        float lo, inv, top, vmin, vmax
    ctypedef struct edf_tab64:
        const f64_t* keys
        const i32_t* base
        const f64_t* thr
        i64_t L
        f64_t lo, inv, top, vmin, vmax
    ctypedef struct edf_cols32:
        const i32_t* base
        const i32_t* off
        const float* thr
        const float* lo
        const float* inv
        const float* top
        const float* vmin
        const float* vmax
        const f64_t* shift
    ctypedef struct edf_cols64:
        const i32_t* base
        const i32_t* off
        const f64_t* thr
        const f64_t* lo
        const f64_t* inv
        const f64_t* top
        const f64_t* vmin
        const f64_t* vmax
        const f64_t* shift
    ctypedef struct edf_feat:
        i64_t K
        f64_t g0
        f64_t glast
        f64_t shift
    ctypedef struct edf_acc:
        i64_t nn, nb, na, ni
        f64_t s1, s2, tl, th
    void edf_build32(const f64_t* grid, i64_t K, i64_t L, float* keys, i32_t* base, float* thr,
                     edf_tab32* t)
    void edf_build64(const f64_t* grid, i64_t K, i64_t L, i32_t* base, f64_t* thr, edf_tab64* t)
    i64_t edf_bin32(const edf_tab32* t, float x)
    i64_t edf_bin64(const edf_tab64* t, f64_t x)
    void edf_fold32(const edf_tab32* t, const edf_feat* f, const float* x, Py_ssize_t m,
                    i64_t* cnt, edf_acc* acc)
    void edf_fold64(const edf_tab64* t, const edf_feat* f, const f64_t* x, Py_ssize_t m,
                    i64_t* cnt, edf_acc* acc)
    ctypedef struct edf_state:
        i64_t* nn
        i64_t* nb
        i64_t* na
        i64_t* ni
        f64_t* s1
        f64_t* s2
        f64_t* tl
        f64_t* th
    void edf_rows32(const edf_tab32* tabs, const edf_cols32* cols, const edf_feat* feats,
                    const char* x, Py_ssize_t n, Py_ssize_t d, Py_ssize_t rs, Py_ssize_t cs,
                    i64_t* counts, Py_ssize_t cstride, const edf_state* st)
    void edf_rows64(const edf_tab64* tabs, const edf_cols64* cols, const edf_feat* feats,
                    const char* x, Py_ssize_t n, Py_ssize_t d, Py_ssize_t rs, Py_ssize_t cs,
                    i64_t* counts, Py_ssize_t cstride, const edf_state* st)
    void edf_transpose32(const char* x, Py_ssize_t n, Py_ssize_t d, Py_ssize_t rs, Py_ssize_t cs,
                         float* buf, Py_ssize_t ld)
    void edf_transpose64(const char* x, Py_ssize_t n, Py_ssize_t d, Py_ssize_t rs, Py_ssize_t cs,
                         f64_t* buf, Py_ssize_t ld)
    const char* edf_kernel_isa()

import numpy as np

from edgeops.errors import DriftError

# Fold tiling: values per transposed tile of a row-major batch (scratch <= 2 MB, freed after each
# update), rows below which a batch is folded value by value in place.
cdef enum:
    _TILE_VALUES = 262144
    _SMALL_ROWS = 32

# Columns of the per-feature result of ``_Core.stats``.
cdef enum:
    C_N = 0
    C_PSI = 1
    C_JS = 2
    C_KS = 3
    C_KS_BOUND = 4
    C_KS_P = 5
    C_W1 = 6
    C_W1_BOUND = 7
    C_MEAN = 8
    C_STD = 9
    C_N_MOMENTS = 10
    C_NSTATS = 11

STAT_N = C_N
STAT_PSI = C_PSI
STAT_JS = C_JS
STAT_KS = C_KS
STAT_KS_BOUND = C_KS_BOUND
STAT_KS_P = C_KS_P
STAT_W1 = C_W1
STAT_W1_BOUND = C_W1_BOUND
STAT_MEAN = C_MEAN
STAT_STD = C_STD
STAT_N_MOMENTS = C_N_MOMENTS
N_STATS = C_NSTATS


# --------------------------------------------------------------------------------------------
# Scalar helpers
# --------------------------------------------------------------------------------------------

cdef f64_t _kolmogorov_sf(f64_t lam) noexcept nogil:
    """P(K > lam) for the Kolmogorov distribution (absolute error < 1e-15 after the series)."""
    cdef f64_t s = 0.0, term, sign = 1.0
    cdef int k
    if lam <= 0.0:
        return 1.0
    if lam < 1.18:
        # Jacobi form: P(K <= lam) = sqrt(2 pi) / lam * sum exp(-(2k-1)^2 pi^2 / (8 lam^2)).
        for k in range(1, 12):
            term = exp(-(2.0 * k - 1.0) * (2.0 * k - 1.0) * M_PI * M_PI / (8.0 * lam * lam))
            s += term
            if term < 1e-17:
                break
        s = 1.0 - sqrt(2.0 * M_PI) / lam * s
    else:
        for k in range(1, 101):
            term = exp(-2.0 * k * k * lam * lam)
            s += sign * term
            sign = -sign
            if term < 1e-300:
                break
        s = 2.0 * s
    if s < 0.0:
        return 0.0
    if s > 1.0:
        return 1.0
    return s


def kolmogorov_sf(double lam) -> float:
    """The Kolmogorov survival function (exposed for tests)."""
    return _kolmogorov_sf(lam)


cdef f64_t _ks_pvalue(f64_t d, f64_t n, f64_t m) noexcept nogil:
    """Asymptotic two-sample p-value with Stephens' small-sample correction."""
    cdef f64_t en, sq
    if n <= 0.0 or m <= 0.0:
        return 1.0
    en = n * m / (n + m)
    sq = sqrt(en)
    return _kolmogorov_sf((sq + 0.12 + 0.11 / sq) * d)


def ks_pvalue(double d, double n, double m) -> float:
    """Asymptotic two-sample KS p-value for statistic ``d`` and sample sizes ``n``, ``m``."""
    return _ks_pvalue(d, n, m)


cdef void _psi_js(const i64_t* cur, const i64_t* ref, Py_ssize_t B, f64_t eps,
                  f64_t* psi_out, f64_t* js_out) noexcept nogil:
    """PSI (additively smoothed) and Jensen-Shannon distance (natural log) of two count vectors."""
    cdef i64_t n = 0, m = 0
    cdef Py_ssize_t b
    cdef f64_t a, e, a_s, e_s, norm, psi = 0.0, jsd = 0.0, mix
    for b in range(B):
        n += cur[b]
        m += ref[b]
    if n == 0 or m == 0 or B <= 1:
        psi_out[0] = 0.0
        js_out[0] = 0.0
        return
    norm = 1.0 + B * eps
    for b in range(B):
        a = cur[b] / <f64_t>n
        e = ref[b] / <f64_t>m
        a_s = (a + eps) / norm
        e_s = (e + eps) / norm
        psi += (a_s - e_s) * log(a_s / e_s)
        mix = 0.5 * (a + e)
        if a > 0.0:
            jsd += 0.5 * a * log(a / mix)
        if e > 0.0:
            jsd += 0.5 * e * log(e / mix)
    psi_out[0] = psi
    js_out[0] = sqrt(jsd) if jsd > 0.0 else 0.0


def psi_js_counts(const i64_t[::1] cur, const i64_t[::1] ref, double eps):
    """(PSI, JS distance) of two count vectors of the same length."""
    cdef f64_t psi = 0.0, js = 0.0
    if cur.shape[0] != ref.shape[0]:
        raise DriftError("count vectors differ in length")
    with nogil:
        _psi_js(&cur[0] if cur.shape[0] else NULL, &ref[0] if ref.shape[0] else NULL,
                cur.shape[0], eps, &psi, &js)
    return psi, js


# --------------------------------------------------------------------------------------------
# The histogram core of DriftMonitor
# --------------------------------------------------------------------------------------------

cdef class _Tables:
    """The cell tables of one reference profile, per input type, built on first use and shared by
    every copy of a core (derived data: never serialised).

    Feature j with K grid points has L = cells[j] cells. float64 input uses ``base64`` (L + 1 int32
    entries from ``off[j]``) and ``thr64`` (L float64 from ``off[j]``); float32 input uses
    ``keys32`` (the grid rounded up to float32, +inf padded), ``base32`` and ``thr32``. ``par64`` /
    ``par32`` hold each feature's cell parameters side by side (rows lo, inv, top, vmin, vmax) for
    the small-batch kernel. See native/src/fold.h.
    """

    cdef readonly Py_ssize_t d, kstride
    cdef readonly object grid, k, shift, cells, off
    cdef readonly object keys32, base32, thr32, par32, base64, thr64, par64
    cdef edf_tab32* t32
    cdef edf_tab64* t64
    cdef edf_cols32 c32
    cdef edf_cols64 c64

    def __cinit__(self):
        self.t32 = NULL
        self.t64 = NULL

    def __init__(self, grid, k, shift, cells):
        self.grid = grid
        self.k = k
        self.shift = shift
        self.d = grid.shape[0]
        self.kstride = grid.shape[1]
        self.cells = np.ascontiguousarray(cells, dtype=np.int64)
        if self.cells.shape != (self.d,) or np.any(self.cells < 1) or np.any(self.cells > 1 << 20):
            raise DriftError("cell counts out of range")
        off = np.zeros(self.d + 1, dtype=np.int64)
        np.cumsum(self.cells + 1, out=off[1:])
        if off[self.d] >= 1 << 31:
            raise DriftError("look-up tables too large")
        self.off = off.astype(np.int32)

    def __dealloc__(self):
        free(self.t32)
        free(self.t64)

    cdef int ensure32(self) except -1:
        if self.t32 != NULL:
            return 0
        cdef Py_ssize_t d = self.d, j
        cdef i64_t o
        self.keys32 = np.zeros((d, self.kstride), dtype=np.float32)
        self.base32 = np.zeros(self.off[d], dtype=np.int32)
        self.thr32 = np.zeros(self.off[d], dtype=np.float32)
        self.par32 = np.zeros((5, d), dtype=np.float32)
        cdef const f64_t[:, ::1] grid = self.grid
        cdef const i64_t[::1] k = self.k, cells = self.cells
        cdef const i32_t[::1] off = self.off
        cdef float[:, ::1] keys = self.keys32, par = self.par32
        cdef i32_t[::1] base = self.base32
        cdef float[::1] thr = self.thr32
        cdef const f64_t[::1] shift = self.shift
        cdef edf_tab32* t = <edf_tab32*>malloc(d * sizeof(edf_tab32))
        if t == NULL:
            raise MemoryError()
        for j in range(d):
            o = off[j]
            edf_build32(&grid[j, 0], k[j], cells[j], &keys[j, 0], &base[o], &thr[o], &t[j])
            par[0, j] = t[j].lo
            par[1, j] = t[j].inv
            par[2, j] = t[j].top
            par[3, j] = t[j].vmin
            par[4, j] = t[j].vmax
        self.c32.base = &base[0]
        self.c32.off = &off[0]
        self.c32.thr = &thr[0]
        self.c32.lo = &par[0, 0]
        self.c32.inv = &par[1, 0]
        self.c32.top = &par[2, 0]
        self.c32.vmin = &par[3, 0]
        self.c32.vmax = &par[4, 0]
        self.c32.shift = &shift[0]
        self.t32 = t
        return 0

    cdef int ensure64(self) except -1:
        if self.t64 != NULL:
            return 0
        cdef Py_ssize_t d = self.d, j
        cdef i64_t o
        self.base64 = np.zeros(self.off[d], dtype=np.int32)
        self.thr64 = np.zeros(self.off[d], dtype=np.float64)
        self.par64 = np.zeros((5, d), dtype=np.float64)
        cdef const f64_t[:, ::1] grid = self.grid
        cdef const i64_t[::1] k = self.k, cells = self.cells
        cdef const i32_t[::1] off = self.off
        cdef i32_t[::1] base = self.base64
        cdef f64_t[::1] thr = self.thr64
        cdef f64_t[:, ::1] par = self.par64
        cdef const f64_t[::1] shift = self.shift
        cdef edf_tab64* t = <edf_tab64*>malloc(d * sizeof(edf_tab64))
        if t == NULL:
            raise MemoryError()
        for j in range(d):
            o = off[j]
            edf_build64(&grid[j, 0], k[j], cells[j], &base[o], &thr[o], &t[j])
            par[0, j] = t[j].lo
            par[1, j] = t[j].inv
            par[2, j] = t[j].top
            par[3, j] = t[j].vmin
            par[4, j] = t[j].vmax
        self.c64.base = &base[0]
        self.c64.off = &off[0]
        self.c64.thr = &thr[0]
        self.c64.lo = &par[0, 0]
        self.c64.inv = &par[1, 0]
        self.c64.top = &par[2, 0]
        self.c64.vmin = &par[3, 0]
        self.c64.vmax = &par[4, 0]
        self.c64.shift = &shift[0]
        self.t64 = t
        return 0


def kernel_isa() -> str:
    """The variant of the fold kernels this CPU runs ("avx2", "default" or "portable")."""
    return edf_kernel_isa().decode()


cdef class _Core:
    """Binning tables of one reference profile plus the mutable state of one window.

    Read-only tables (shared by copies): ``grid`` (d, kstride) padded with +inf (kstride >= K + 2),
    ``k`` grid sizes, ``shift`` (the reference means), ``coarse`` (d, kstride+1) fine bin -> PSI
    bin, ``nbins`` PSI bins per feature, ``ref_bins`` (d, bmax) reference counts per PSI bin,
    ``ref_lt`` (d, kstride) reference counts strictly below each grid point, ``ref_n`` finite
    reference counts, ``tables`` (the fold's cell tables, ``cells[j]`` cells for feature j).

    State (int64 / float64): ``counts`` (d, kstride+1), ``n_nan``, ``n_below``, ``n_above``,
    ``n_inf``, ``s1``, ``s2`` (sums of x - shift and its square over finite values), ``tail_lo``,
    ``tail_hi`` (sums of g[0] - x below and x - g[K-1] above the reference range) and ``n_rows``.
    The arrays are allocated once and only ever modified in place, so the raw pointers the fold
    uses stay valid for the object's lifetime. Slot K + 1 of each counts row is the fold's scratch
    slot (for NaN) and is zero between calls.
    """

    cdef readonly Py_ssize_t d, kstride, bmax
    cdef readonly object grid, k, shift
    cdef readonly object coarse, nbins, ref_bins, ref_lt, ref_n
    cdef readonly _Tables tables
    cdef readonly object counts, n_nan, n_below, n_above, n_inf, s1, s2, tail_lo, tail_hi
    cdef public i64_t n_rows
    cdef object feat_buf
    # Raw views of the arrays above (bound in _bind).
    cdef const edf_feat* p_feat
    cdef edf_state st
    cdef i64_t* p_counts
    cdef i64_t* p_nan
    cdef i64_t* p_below
    cdef i64_t* p_above
    cdef i64_t* p_inf
    cdef f64_t* p_s1
    cdef f64_t* p_s2
    cdef f64_t* p_tlo
    cdef f64_t* p_thi

    def __init__(self, grid, k, shift, coarse, nbins, ref_bins, ref_lt, ref_n, cells):
        self.grid = np.ascontiguousarray(grid, dtype=np.float64)
        self.d = self.grid.shape[0]
        self.kstride = self.grid.shape[1]
        self.k = np.ascontiguousarray(k, dtype=np.int64)
        self.shift = np.ascontiguousarray(shift, dtype=np.float64)
        self.coarse = np.ascontiguousarray(coarse, dtype=np.int32)
        self.nbins = np.ascontiguousarray(nbins, dtype=np.int64)
        self.ref_bins = np.ascontiguousarray(ref_bins, dtype=np.int64)
        self.bmax = self.ref_bins.shape[1]
        self.ref_lt = np.ascontiguousarray(ref_lt, dtype=np.int64)
        self.ref_n = np.ascontiguousarray(ref_n, dtype=np.int64)
        if self.d < 1:
            raise DriftError("core tables need at least one feature")
        for arr, shape in (
            (self.k, (self.d,)), (self.shift, (self.d,)), (self.coarse, (self.d, self.kstride + 1)),
            (self.nbins, (self.d,)), (self.ref_bins, (self.d, self.bmax)),
            (self.ref_lt, (self.d, self.kstride)), (self.ref_n, (self.d,)),
        ):
            if arr.shape != shape:
                raise DriftError(f"inconsistent core table shape {arr.shape}, expected {shape}")
        # The fold trusts these invariants instead of checking per sample.
        if np.any(self.k < 0) or np.any(self.k + 2 > self.kstride) or np.any(self.k >= 1 << 30):
            raise DriftError("grid sizes out of range (need two +inf pads)")
        kcol = self.k[:, None]
        cols = np.arange(self.kstride)[None, :]
        if not np.all(np.isposinf(self.grid[cols >= kcol])):
            raise DriftError("grid padding must be +inf")
        with np.errstate(invalid="ignore"):  # inf - inf in the padding
            steps = np.diff(self.grid, axis=1)
        if np.any(steps[cols[:, 1:] < kcol] <= 0):
            raise DriftError("grid must be strictly increasing")
        if np.any(self.nbins < 1) or np.any(self.nbins > self.bmax):
            raise DriftError("PSI bin counts out of range")
        if np.any(self.coarse < 0) or np.any(self.coarse >= self.nbins[:, None]):
            raise DriftError("coarse map out of range")
        self.tables = _Tables(self.grid, self.k, self.shift, cells)
        feat = np.zeros(self.d, dtype=[("K", np.int64), ("g0", np.float64), ("glast", np.float64),
                                       ("shift", np.float64)])
        has = self.k > 0
        feat["K"] = self.k
        rows = np.arange(self.d)
        feat["g0"] = np.where(has, self.grid[rows, 0], 0.0)
        feat["glast"] = np.where(has, self.grid[rows, np.maximum(self.k - 1, 0)], 0.0)
        feat["shift"] = self.shift
        self.feat_buf = feat
        self.counts = np.zeros((self.d, self.kstride + 1), dtype=np.int64)
        self.n_nan = np.zeros(self.d, dtype=np.int64)
        self.n_below = np.zeros(self.d, dtype=np.int64)
        self.n_above = np.zeros(self.d, dtype=np.int64)
        self.n_inf = np.zeros(self.d, dtype=np.int64)
        self.s1 = np.zeros(self.d, dtype=np.float64)
        self.s2 = np.zeros(self.d, dtype=np.float64)
        self.tail_lo = np.zeros(self.d, dtype=np.float64)
        self.tail_hi = np.zeros(self.d, dtype=np.float64)
        self.n_rows = 0
        self._bind()

    @property
    def cells(self):
        """Cells of each feature's look-up table."""
        return self.tables.cells

    cdef void _bind(self):
        cdef const unsigned char[::1] feat = self.feat_buf.view(np.uint8)
        cdef i64_t[:, ::1] counts = self.counts
        cdef i64_t[::1] n_nan = self.n_nan, n_below = self.n_below, n_above = self.n_above
        cdef i64_t[::1] n_inf = self.n_inf
        cdef f64_t[::1] s1 = self.s1, s2 = self.s2, tlo = self.tail_lo, thi = self.tail_hi
        self.p_feat = <const edf_feat*>&feat[0]
        self.p_counts = &counts[0, 0]
        self.p_nan = &n_nan[0]
        self.p_below = &n_below[0]
        self.p_above = &n_above[0]
        self.p_inf = &n_inf[0]
        self.p_s1 = &s1[0]
        self.p_s2 = &s2[0]
        self.p_tlo = &tlo[0]
        self.p_thi = &thi[0]
        self.st.nn = self.p_nan
        self.st.nb = self.p_below
        self.st.na = self.p_above
        self.st.ni = self.p_inf
        self.st.s1 = self.p_s1
        self.st.s2 = self.p_s2
        self.st.tl = self.p_tlo
        self.st.th = self.p_thi

    def reset(self):
        """Zero the window state (tables are kept)."""
        self.counts.fill(0)
        self.n_nan.fill(0)
        self.n_below.fill(0)
        self.n_above.fill(0)
        self.n_inf.fill(0)
        self.s1.fill(0.0)
        self.s2.fill(0.0)
        self.tail_lo.fill(0.0)
        self.tail_hi.fill(0.0)
        self.n_rows = 0

    def copy(self):
        """A new core sharing the read-only tables, with a copy of the state."""
        cdef _Core other = _Core.__new__(_Core)
        other.d = self.d
        other.kstride = self.kstride
        other.bmax = self.bmax
        other.grid = self.grid
        other.k = self.k
        other.shift = self.shift
        other.coarse = self.coarse
        other.nbins = self.nbins
        other.ref_bins = self.ref_bins
        other.ref_lt = self.ref_lt
        other.ref_n = self.ref_n
        other.tables = self.tables
        other.feat_buf = self.feat_buf
        other.counts = self.counts.copy()
        other.n_nan = self.n_nan.copy()
        other.n_below = self.n_below.copy()
        other.n_above = self.n_above.copy()
        other.n_inf = self.n_inf.copy()
        other.s1 = self.s1.copy()
        other.s2 = self.s2.copy()
        other.tail_lo = self.tail_lo.copy()
        other.tail_hi = self.tail_hi.copy()
        other.n_rows = self.n_rows
        other._bind()
        return other

    def merge(self, _Core other):
        """Add the state of ``other`` (same tables) into this core, in place."""
        if other.grid is not self.grid and (
                other.d != self.d or other.kstride != self.kstride
                or not np.array_equal(other.grid, self.grid)):
            raise DriftError("cannot merge drift states of different profiles")
        np.add(self.counts, other.counts, out=self.counts)
        np.add(self.n_nan, other.n_nan, out=self.n_nan)
        np.add(self.n_below, other.n_below, out=self.n_below)
        np.add(self.n_above, other.n_above, out=self.n_above)
        np.add(self.n_inf, other.n_inf, out=self.n_inf)
        np.add(self.s1, other.s1, out=self.s1)
        np.add(self.s2, other.s2, out=self.s2)
        np.add(self.tail_lo, other.tail_lo, out=self.tail_lo)
        np.add(self.tail_hi, other.tail_hi, out=self.tail_hi)
        self.n_rows += other.n_rows

    def update(self, batch):
        """Fold a 2-D float32 / float64 batch of shape (rows, d)."""
        cdef Py_buffer view
        cdef bint is_f32
        cdef int rc = 0
        cdef Py_ssize_t n
        if type(batch) is not np.ndarray and not isinstance(batch, np.ndarray):
            raise DriftError(f"drift batch must be a numpy.ndarray, got {type(batch).__name__}")
        PyObject_GetBuffer(batch, &view, PyBUF_RECORDS_RO)
        try:
            if view.ndim != 2:
                raise DriftError(f"drift batch must be 2-D (rows, features), got {view.ndim}-D "
                                 f"shape {batch.shape}")
            if view.shape[1] != self.d:
                raise DriftError(f"drift batch has {view.shape[1]} features, the reference "
                                 f"profile has {self.d}")
            if view.format[0] == b'f' and view.format[1] == 0:
                is_f32 = True
            elif view.format[0] == b'd' and view.format[1] == 0:
                is_f32 = False
            elif batch.dtype.kind == 'f' and batch.dtype.itemsize in (4, 8):
                raise DriftError(f"drift batch must be a native-byte-order float32 or float64 "
                                 f"array, got {batch.dtype.str}")
            else:
                raise DriftError(f"drift batch must be float32 or float64, got {batch.dtype}")
            n = view.shape[0]
            if n:
                if is_f32:
                    self.tables.ensure32()
                    with nogil:
                        rc = self._fold(<const float*>view.buf, n, view.strides[0], view.strides[1])
                else:
                    self.tables.ensure64()
                    with nogil:
                        rc = self._fold(<const double*>view.buf, n, view.strides[0], view.strides[1])
                if rc != 0:
                    raise MemoryError("no memory for the drift fold's scratch buffers")
                self.n_rows += n
        finally:
            PyBuffer_Release(&view)

    @cython.nonecheck(False)
    cdef int _fold(self, const real_t* X, Py_ssize_t n, Py_ssize_t rs, Py_ssize_t cs) noexcept nogil:
        """Fold n rows; ``rs`` / ``cs`` are the row / column strides in bytes.

        Contiguous columns (one feature, Fortran order) go to the block kernel in place. Batches
        of fewer than _SMALL_ROWS rows otherwise are folded in place in one call (edf_rows: across
        the features of each row when they are contiguous, else value by value).
        Larger ones are transposed, one tile of rows at a time, into a contiguous buffer (one read
        of the batch in memory order) and each column of the tile goes to the block kernel.
        Returns -1 when out of memory (nothing folded), else 0.
        """
        cdef Py_ssize_t d = self.d, isz = sizeof(real_t), R, Rp, i0, i1, j, m
        cdef const char* base = <const char*>X
        cdef real_t* buf
        if rs == isz:
            for j in range(d):
                self._fold_column(j, <const real_t*>(base + j * cs), n)
            return 0
        if n < _SMALL_ROWS:
            if real_t is float:
                edf_rows32(self.tables.t32, &self.tables.c32, self.p_feat, base, n, d, rs, cs,
                           self.p_counts, self.kstride + 1, &self.st)
            else:
                edf_rows64(self.tables.t64, &self.tables.c64, self.p_feat, base, n, d, rs, cs,
                           self.p_counts, self.kstride + 1, &self.st)
            return 0
        R = _TILE_VALUES // d
        if R < EDF_BLOCK:
            R = EDF_BLOCK
        if R > n:
            R = n
        # Column stride padded off a power of two: d write streams would share cache sets.
        Rp = R + 24
        buf = <real_t*>malloc(Rp * d * isz)
        if buf == NULL:
            return -1
        i0 = 0
        while i0 < n:
            i1 = i0 + R if n - i0 > R else n
            m = i1 - i0
            if real_t is float:
                edf_transpose32(base + i0 * rs, m, d, rs, cs, buf, Rp)
            else:
                edf_transpose64(base + i0 * rs, m, d, rs, cs, buf, Rp)
            for j in range(d):
                self._fold_column(j, buf + j * Rp, m)
            i0 = i1
        free(buf)
        return 0

    @cython.nonecheck(False)
    cdef void _fold_column(self, Py_ssize_t j, const real_t* x, Py_ssize_t m) noexcept nogil:
        """Fold ``m`` contiguous values of feature ``j`` into its state."""
        cdef i64_t* cnt = self.p_counts + j * (self.kstride + 1)
        cdef edf_acc a
        a.nn = a.nb = a.na = a.ni = 0
        a.s1 = a.s2 = a.tl = a.th = 0.0
        if real_t is float:
            edf_fold32(&self.tables.t32[j], &self.p_feat[j], x, m, cnt, &a)
        else:
            edf_fold64(&self.tables.t64[j], &self.p_feat[j], x, m, cnt, &a)
        if a.nn or a.nb or a.na:
            self.p_nan[j] += a.nn
            self.p_below[j] += a.nb
            self.p_above[j] += a.na
            self.p_inf[j] += a.ni
            self.p_tlo[j] += a.tl
            self.p_thi[j] += a.th
        self.p_s1[j] += a.s1
        self.p_s2[j] += a.s2

    def stats(self, double eps):
        """Per-feature statistics as a (d, C_NSTATS) float64 array (columns STAT_*)."""
        out = np.zeros((self.d, C_NSTATS), dtype=np.float64)
        scratch = np.zeros(max(self.bmax, 1), dtype=np.int64)
        cdef f64_t[:, ::1] o = out
        cdef i64_t[::1] cc = scratch
        cdef const i64_t[:, ::1] counts = self.counts
        cdef const f64_t[:, ::1] grid = self.grid
        cdef const i64_t[::1] kk = self.k, nbins = self.nbins, ref_n = self.ref_n
        cdef const i32_t[:, ::1] coarse = self.coarse
        cdef const i64_t[:, ::1] ref_bins = self.ref_bins, ref_lt = self.ref_lt
        cdef const i64_t[::1] n_above = self.n_above, n_inf = self.n_inf
        cdef const f64_t[::1] s1 = self.s1, s2 = self.s2, tlo = self.tail_lo, thi = self.tail_hi
        cdef const f64_t[::1] shift = self.shift
        cdef Py_ssize_t d = self.d, j, k, K, B
        cdef i64_t n, m, cum, nmom
        cdef f64_t psi, js, c_k, c_n, r_k, r_n, dks, dup, diff, w1, wb, dg, mean, var
        with nogil:
            for j in range(d):
                K = kk[j]
                B = nbins[j]
                m = ref_n[j]
                n = 0
                for k in range(K + 1):
                    n += counts[j, k]
                o[j, C_N] = <f64_t>n
                nmom = n - n_inf[j]
                o[j, C_N_MOMENTS] = <f64_t>nmom
                if nmom > 0:
                    mean = s1[j] / nmom
                    var = s2[j] / nmom - mean * mean
                    o[j, C_MEAN] = shift[j] + mean
                    o[j, C_STD] = sqrt(var) if var > 0.0 else 0.0
                o[j, C_KS_P] = 1.0
                if n == 0 or m == 0 or K == 0:
                    continue
                # PSI and JS on the coarse bins.
                for k in range(B):
                    cc[k] = 0
                for k in range(K + 1):
                    cc[coarse[j, k]] += counts[j, k]
                _psi_js(&cc[0], &ref_bins[j, 0], B, eps, &psi, &js)
                o[j, C_PSI] = psi
                o[j, C_JS] = js
                # KS and Wasserstein-1 on the fine grid. c_k, r_k: fractions strictly below g[k].
                dks = n_above[j] / <f64_t>n
                dup = dks
                w1 = 0.0
                wb = 0.0
                cum = counts[j, 0]
                c_k = cum / <f64_t>n
                r_k = ref_lt[j, 0] / <f64_t>m
                for k in range(K):
                    diff = fabs(c_k - r_k)
                    if diff > dks:
                        dks = diff
                    if k + 1 < K:
                        cum += counts[j, k + 1]
                        c_n = cum / <f64_t>n
                        r_n = ref_lt[j, k + 1] / <f64_t>m
                        if c_n - r_k > dup:
                            dup = c_n - r_k
                        if r_n - c_k > dup:
                            dup = r_n - c_k
                        dg = grid[j, k + 1] - grid[j, k]
                        w1 += dg * fabs(0.5 * (c_k + c_n) - 0.5 * (r_k + r_n))
                        wb += dg * 0.5 * ((c_n - c_k) + (r_n - r_k))
                        c_k = c_n
                        r_k = r_n
                if dup < dks:
                    dup = dks
                o[j, C_KS] = dks
                o[j, C_KS_BOUND] = dup - dks
                o[j, C_KS_P] = _ks_pvalue(dks, <f64_t>n, <f64_t>m)
                if nmom > 0:
                    w1 += (tlo[j] + thi[j]) / nmom
                o[j, C_W1] = w1
                o[j, C_W1_BOUND] = wb
        return out


def bucketize(const f64_t[::1] g, const real_t[::1] x, Py_ssize_t L=64):
    """Fine bin ``#(g <= x)`` of each value through the fold's cell tables (``L`` cells), -1 for
    NaN. float32 ``x`` goes through the float32 tables; tests compare with numpy.searchsorted."""
    cdef Py_ssize_t K = g.shape[0], i
    if L < 1 or L > 1 << 20:
        raise DriftError("look-up table size out of range")
    padded = np.full(K + 2, np.inf)
    padded[:K] = g
    if K > 1 and np.any(np.diff(padded[:K]) <= 0):
        raise DriftError("grid must be strictly increasing")
    cdef const f64_t[::1] grid = padded
    base_arr = np.zeros(L + 1, dtype=np.int32)
    cdef i32_t[::1] base = base_arr
    out = np.zeros(x.shape[0], dtype=np.int64)
    cdef i64_t[::1] o = out
    keys_arr = np.zeros(K + 2, dtype=np.float32)
    thr32_arr = np.zeros(L, dtype=np.float32)
    thr64_arr = np.zeros(L, dtype=np.float64)
    cdef float[::1] keys = keys_arr, thr32 = thr32_arr
    cdef f64_t[::1] thr64 = thr64_arr
    cdef edf_tab32 t32
    cdef edf_tab64 t64
    cdef real_t v
    if real_t is float:
        edf_build32(&grid[0], K, L, &keys[0], &base[0], &thr32[0], &t32)
    else:
        edf_build64(&grid[0], K, L, &base[0], &thr64[0], &t64)
    for i in range(x.shape[0]):
        v = x[i]
        if v != v:
            o[i] = -1
        elif real_t is float:
            o[i] = edf_bin32(&t32, v)
        else:
            o[i] = edf_bin64(&t64, v)
    return out


# --------------------------------------------------------------------------------------------
# Class counts for classifier outputs
# --------------------------------------------------------------------------------------------

def class_counts(const i64_t[::1] ids, i64_t[::1] counts) -> int:
    """Add ``ids`` into ``counts``; returns how many ids were outside ``[0, len(counts))``."""
    cdef Py_ssize_t i, n = ids.shape[0], C = counts.shape[0]
    cdef i64_t c, unknown = 0
    with nogil:
        for i in range(n):
            c = ids[i]
            if c < 0 or c >= C:
                unknown += 1
            else:
                counts[c] += 1
    return unknown


# --------------------------------------------------------------------------------------------
# Streaming change detectors
# --------------------------------------------------------------------------------------------

cdef class _PageHinkley:
    """Two-sided Page-Hinkley test; see edgeops.drift.PageHinkley for the definition."""

    cdef public double delta, threshold, alpha
    cdef public i64_t min_instances
    cdef public int up, down
    cdef public i64_t n
    cdef public double mean, s_up, min_up, s_dn, max_dn
    cdef public i64_t first_alarm, n_alarms

    def __init__(self, double delta, double threshold, double alpha, i64_t min_instances,
                 bint up, bint down):
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.min_instances = min_instances
        self.up = up
        self.down = down
        self.first_alarm = -1
        self.n_alarms = 0
        self.reset()

    def reset(self):
        self.n = 0
        self.mean = 0.0
        self.s_up = 0.0
        self.min_up = 0.0
        self.s_dn = 0.0
        self.max_dn = 0.0

    @cython.nonecheck(False)
    cdef inline bint _step(self, double x) noexcept nogil:
        cdef double inv, g
        self.n += 1
        inv = 1.0 / <double>self.n
        self.mean += (x - self.mean) * inv
        self.s_up = self.alpha * self.s_up + (x - self.mean - self.delta)
        self.s_dn = self.alpha * self.s_dn + (x - self.mean + self.delta)
        if self.s_up < self.min_up:
            self.min_up = self.s_up
        if self.s_dn > self.max_dn:
            self.max_dn = self.s_dn
        if self.n < self.min_instances:
            return False
        if (self.up and self.s_up - self.min_up > self.threshold) or \
                (self.down and self.max_dn - self.s_dn > self.threshold):
            self.n = 0
            self.mean = 0.0
            self.s_up = 0.0
            self.min_up = 0.0
            self.s_dn = 0.0
            self.max_dn = 0.0
            return True
        return False

    def update(self, double x) -> bool:
        if x != x:
            return False
        return self._step(x)

    def update_many(self, const double[::1] xs) -> int:
        # The same recurrence as _step, on local copies of the state (kept in registers).
        cdef Py_ssize_t i, n = xs.shape[0]
        cdef i64_t alarms = 0, first = -1, cnt = self.n, min_n = self.min_instances
        cdef double x, inv, mean = self.mean, su = self.s_up, mu = self.min_up
        cdef double sd = self.s_dn, md = self.max_dn, alpha = self.alpha, delta = self.delta
        cdef double thr = self.threshold
        cdef bint up = self.up, down = self.down
        with nogil:
            for i in range(n):
                x = xs[i]
                if x != x:
                    continue
                cnt += 1
                inv = 1.0 / <double>cnt
                mean += (x - mean) * inv
                su = alpha * su + (x - mean - delta)
                sd = alpha * sd + (x - mean + delta)
                if su < mu:
                    mu = su
                if sd > md:
                    md = sd
                if cnt >= min_n and ((up and su - mu > thr) or (down and md - sd > thr)):
                    if alarms == 0:
                        first = i
                    alarms += 1
                    cnt = 0
                    mean = 0.0
                    su = 0.0
                    mu = 0.0
                    sd = 0.0
                    md = 0.0
        self.n = cnt
        self.mean = mean
        self.s_up = su
        self.min_up = mu
        self.s_dn = sd
        self.max_dn = md
        self.first_alarm = first
        return alarms

    def get(self) -> float:
        cdef double g_up = self.s_up - self.min_up, g_dn = self.max_dn - self.s_dn
        if not self.up:
            g_up = 0.0
        if not self.down:
            g_dn = 0.0
        return g_up if g_up > g_dn else g_dn


cdef class _Cusum:
    """Two-sided tabular CUSUM; see edgeops.drift.Cusum for the definition."""

    cdef public double target, slack, threshold
    cdef public i64_t warmup
    cdef public int has_target, fixed
    cdef public i64_t n
    cdef public double wsum, s_hi, s_lo
    cdef public i64_t first_alarm

    def __init__(self, double target, bint has_target, double slack, double threshold,
                 i64_t warmup):
        self.target = target
        self.has_target = has_target
        self.fixed = has_target
        self.slack = slack
        self.threshold = threshold
        self.warmup = warmup
        self.first_alarm = -1
        self.reset()

    def reset(self):
        self.n = 0
        self.wsum = 0.0
        self.s_hi = 0.0
        self.s_lo = 0.0
        if not self.fixed:
            self.has_target = 0
            self.target = 0.0

    @cython.nonecheck(False)
    cdef inline bint _step(self, double x) noexcept nogil:
        cdef double t
        if not self.has_target:
            # Estimate the in-control mean from the first `warmup` samples.
            self.n += 1
            self.wsum += x
            if self.n >= self.warmup:
                self.target = self.wsum / <double>self.n
                self.has_target = 1
            return False
        self.n += 1
        t = self.s_hi + (x - self.target - self.slack)
        self.s_hi = t if t > 0.0 else 0.0
        t = self.s_lo + (self.target - self.slack - x)
        self.s_lo = t if t > 0.0 else 0.0
        if self.s_hi > self.threshold or self.s_lo > self.threshold:
            self.s_hi = 0.0
            self.s_lo = 0.0
            return True
        return False

    def update(self, double x) -> bool:
        if x != x:
            return False
        return self._step(x)

    def update_many(self, const double[::1] xs) -> int:
        cdef Py_ssize_t i, n = xs.shape[0]
        cdef i64_t alarms = 0, first = -1
        cdef double x
        with nogil:
            for i in range(n):
                x = xs[i]
                if x != x:
                    continue
                if self._step(x):
                    if alarms == 0:
                        first = i
                    alarms += 1
        self.first_alarm = first
        return alarms

    def get(self) -> float:
        return self.s_hi if self.s_hi > self.s_lo else self.s_lo


# --------------------------------------------------------------------------------------------
# Debug-build probe
# --------------------------------------------------------------------------------------------

def _probe_index(const f64_t[:] v, Py_ssize_t i) -> float:
    """``v[i]`` with whatever checks this build was compiled with."""
    return v[i]


def bounds_checked() -> bool:
    """True when this module was compiled with bounds checking (EDGEOPS_CYTHON_DEBUG=1).

    Probes safely: the view is a slice of a larger buffer, so an unchecked read past its end still
    lands inside allocated memory and returns the sentinel instead of raising IndexError.
    """
    buf = np.arange(8, dtype=np.float64)
    try:
        _probe_index(buf[2:4], 3)
    except IndexError:
        return True
    return False
