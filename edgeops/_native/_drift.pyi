# Stub for the compiled module edgeops._native._drift (native/_drift.pyx).
from typing import Any

import numpy as np
import numpy.typing as npt

STAT_N: int
STAT_PSI: int
STAT_JS: int
STAT_KS: int
STAT_KS_BOUND: int
STAT_KS_P: int
STAT_W1: int
STAT_W1_BOUND: int
STAT_MEAN: int
STAT_STD: int
STAT_N_MOMENTS: int
N_STATS: int

_F64 = npt.NDArray[np.float64]
_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]
_I32 = npt.NDArray[np.int32]

def kolmogorov_sf(lam: float) -> float: ...
def ks_pvalue(d: float, n: float, m: float) -> float: ...
def psi_js_counts(cur: _I64, ref: _I64, eps: float) -> tuple[float, float]: ...
def bucketize(g: _F64, x: _F64 | _F32, L: int = 64) -> _I64: ...
def kernel_isa() -> str: ...
def class_counts(ids: _I64, counts: _I64) -> int: ...
def bounds_checked() -> bool: ...
def _probe_index(v: _F64, i: int) -> float: ...

class _Tables:
    d: int
    kstride: int
    grid: _F64
    k: _I64
    shift: _F64
    cells: _I64
    off: _I32
    keys32: _F32 | None
    base32: _I32 | None
    thr32: _F32 | None
    par32: _F32 | None
    base64: _I32 | None
    thr64: _F64 | None
    par64: _F64 | None
    def __init__(self, grid: _F64, k: _I64, shift: _F64, cells: _I64) -> None: ...

class _Core:
    d: int
    kstride: int
    bmax: int
    grid: _F64
    k: _I64
    shift: _F64
    coarse: _I32
    nbins: _I64
    ref_bins: _I64
    ref_lt: _I64
    ref_n: _I64
    tables: _Tables
    @property
    def cells(self) -> _I64: ...
    counts: _I64
    n_nan: _I64
    n_below: _I64
    n_above: _I64
    n_inf: _I64
    s1: _F64
    s2: _F64
    tail_lo: _F64
    tail_hi: _F64
    n_rows: int
    def __init__(
        self,
        grid: _F64,
        k: _I64,
        shift: _F64,
        coarse: _I32,
        nbins: _I64,
        ref_bins: _I64,
        ref_lt: _I64,
        ref_n: _I64,
        cells: _I64,
    ) -> None: ...
    def reset(self) -> None: ...
    def copy(self) -> _Core: ...
    def merge(self, other: _Core) -> None: ...
    def update(self, batch: Any) -> None: ...
    def stats(self, eps: float) -> _F64: ...

class _PageHinkley:
    delta: float
    threshold: float
    alpha: float
    min_instances: int
    up: int
    down: int
    n: int
    mean: float
    s_up: float
    min_up: float
    s_dn: float
    max_dn: float
    first_alarm: int
    n_alarms: int
    def __init__(
        self, delta: float, threshold: float, alpha: float, min_instances: int, up: bool, down: bool
    ) -> None: ...
    def reset(self) -> None: ...
    def update(self, x: float) -> bool: ...
    def update_many(self, xs: _F64) -> int: ...
    def get(self) -> float: ...

class _Cusum:
    target: float
    slack: float
    threshold: float
    warmup: int
    has_target: int
    fixed: int
    n: int
    wsum: float
    s_hi: float
    s_lo: float
    first_alarm: int
    def __init__(
        self, target: float, has_target: bool, slack: float, threshold: float, warmup: int
    ) -> None: ...
    def reset(self) -> None: ...
    def update(self, x: float) -> bool: ...
    def update_many(self, xs: _F64) -> int: ...
    def get(self) -> float: ...
