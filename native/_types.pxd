# cython: language_level=3
# Fixed-width types shared by the compiled core. State that leaves the process (merges, state dicts,
# telemetry) is int64 / float64 whatever the word size of the machine that produced it.
from libc.stdint cimport int32_t, int64_t

ctypedef double f64_t
ctypedef int64_t i64_t
ctypedef int32_t i32_t

# Input element types a batch may have.
ctypedef fused real_t:
    float
    double
