/* The drift fold's per-value kernels; see fold.h.
 *
 * C99, with GCC / clang vector extensions where the compiler has them. The kernels are written so
 * that compilers vectorise them (NEON on arm64, SSE2 on any x86-64) and, on x86-64 Linux with GCC
 * or clang, are built twice by function multiversioning: an AVX2 clone and the baseline one,
 * picked at load time by a CPU check, so one binary runs on every x86-64 machine. Nothing is
 * compiled for the build machine's CPU alone. Build with -ffp-contract=off (setup.py does) so that
 * every variant rounds the same way: the counts and the float64 sums are bit for bit the same on
 * AVX2, baseline x86-64 and arm64 (checked under qemu), and with or without vector extensions.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fold.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && defined(__GNUC__) && \
    !defined(EDGEOPS_NO_MULTIVERSION)
#if defined(__has_attribute)
#if __has_attribute(target_clones)
#define EDF_HAVE_CLONES 1
#endif
#endif
#endif

/* The helpers must be inlined into each clone to be compiled for its instruction set. */
#if defined(__GNUC__)
#define EDF_INLINE static inline __attribute__((always_inline))
#else
#define EDF_INLINE static inline
#endif

#ifdef EDF_HAVE_CLONES
#define EDF_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define EDF_MULTIVERSION
#endif

/* GCC / clang vector extensions for the moment sums (lowered to SSE2, AVX2 or NEON as available);
 * without them the same lanes are plain arrays (same sums, slower). */
#if defined(__GNUC__) && defined(__has_builtin) && !defined(EDGEOPS_NO_VECTOR_EXT)
#if __has_builtin(__builtin_convertvector)
#define EDF_VECTOR_EXT 1
#endif
#endif
#ifdef EDF_VECTOR_EXT
typedef double edf_v4d __attribute__((vector_size(32)));
typedef long long edf_v4l __attribute__((vector_size(32)));
typedef float edf_v4f __attribute__((vector_size(16)));

/* Four values as float64 (macros: a vector return value would trip -Wpsabi on baseline x86). */
#define EDF_LOAD4_32(dst, p)                                                                        \
    do {                                                                                        \
        edf_v4f f_;                                                                             \
        memcpy(&f_, (p), sizeof f_);                                                            \
        (dst) = __builtin_convertvector(f_, edf_v4d);                                           \
    } while (0)
#define EDF_LOAD4_64(dst, p) memcpy(&(dst), (p), sizeof(dst))
#endif

const char *edf_kernel_isa(void)
{
#ifdef EDF_HAVE_CLONES
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? "avx2" : "default";
#else
    return "portable";
#endif
}

#define EDF_T float
#define EDF_TAB edf_tab32
#define EDF_S 32
#include "fold_body.h"
#undef EDF_T
#undef EDF_TAB
#undef EDF_S

#define EDF_T double
#define EDF_TAB edf_tab64
#define EDF_S 64
#include "fold_body.h"
#undef EDF_T
#undef EDF_TAB
#undef EDF_S

/* Transposition of a tile of rows into contiguous columns. Rows of contiguous features go through
 * 8 x 8 (float32) or 4 x 4 (float64) register blocks where the compiler has vector shuffles; the
 * rest moves in strips of 16 rows (a strip stays in L1 while each column gets 16 values). */
#if defined(EDF_VECTOR_EXT) && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define EDF_SHUFFLE 1
typedef float edf_v8f __attribute__((vector_size(32)));
#define EDF_SHUF __builtin_shufflevector
#endif
#endif

#define EDF_STRIPS(T)                                                                             \
    do {                                                                                          \
        ptrdiff_t r0_, r1_, i_, j_;                                                               \
        for (r0_ = 0; r0_ < n; r0_ = r1_) {                                                       \
            r1_ = n - r0_ > 16 ? r0_ + 16 : n;                                                    \
            for (j_ = j_from; j_ < d; j_++) {                                                     \
                T *restrict out_ = buf + j_ * ld;                                                 \
                const char *p_ = x + r0_ * rs + j_ * cs;                                          \
                for (i_ = r0_; i_ < r1_; i_++, p_ += rs)                                          \
                    out_[i_] = *(const T *)p_;                                                    \
            }                                                                                     \
        }                                                                                         \
    } while (0)

EDF_MULTIVERSION
void edf_transpose32(const char *x, ptrdiff_t n, ptrdiff_t d, ptrdiff_t rs, ptrdiff_t cs,
                     float *buf, ptrdiff_t ld)
{
    ptrdiff_t j_from = 0, n8 = 0;
#ifdef EDF_SHUFFLE
    if (cs == (ptrdiff_t)sizeof(float) && d >= 8) {
        ptrdiff_t i0, j0, k;
        n8 = n - n % 8;
        j_from = d - d % 8;
        for (i0 = 0; i0 < n8; i0 += 8) {
            for (j0 = 0; j0 < j_from; j0 += 8) {
                edf_v8f r[8], t[8], s[8], o[8];
                for (k = 0; k < 8; k++)
                    memcpy(&r[k], x + (i0 + k) * rs + j0 * cs, sizeof r[k]);
                t[0] = EDF_SHUF(r[0], r[1], 0, 8, 1, 9, 4, 12, 5, 13);
                t[1] = EDF_SHUF(r[0], r[1], 2, 10, 3, 11, 6, 14, 7, 15);
                t[2] = EDF_SHUF(r[2], r[3], 0, 8, 1, 9, 4, 12, 5, 13);
                t[3] = EDF_SHUF(r[2], r[3], 2, 10, 3, 11, 6, 14, 7, 15);
                t[4] = EDF_SHUF(r[4], r[5], 0, 8, 1, 9, 4, 12, 5, 13);
                t[5] = EDF_SHUF(r[4], r[5], 2, 10, 3, 11, 6, 14, 7, 15);
                t[6] = EDF_SHUF(r[6], r[7], 0, 8, 1, 9, 4, 12, 5, 13);
                t[7] = EDF_SHUF(r[6], r[7], 2, 10, 3, 11, 6, 14, 7, 15);
                s[0] = EDF_SHUF(t[0], t[2], 0, 1, 8, 9, 4, 5, 12, 13);
                s[1] = EDF_SHUF(t[0], t[2], 2, 3, 10, 11, 6, 7, 14, 15);
                s[2] = EDF_SHUF(t[1], t[3], 0, 1, 8, 9, 4, 5, 12, 13);
                s[3] = EDF_SHUF(t[1], t[3], 2, 3, 10, 11, 6, 7, 14, 15);
                s[4] = EDF_SHUF(t[4], t[6], 0, 1, 8, 9, 4, 5, 12, 13);
                s[5] = EDF_SHUF(t[4], t[6], 2, 3, 10, 11, 6, 7, 14, 15);
                s[6] = EDF_SHUF(t[5], t[7], 0, 1, 8, 9, 4, 5, 12, 13);
                s[7] = EDF_SHUF(t[5], t[7], 2, 3, 10, 11, 6, 7, 14, 15);
                for (k = 0; k < 4; k++) {
                    o[k] = EDF_SHUF(s[k], s[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
                    o[k + 4] = EDF_SHUF(s[k], s[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
                }
                for (k = 0; k < 8; k++)
                    memcpy(buf + (j0 + k) * ld + i0, &o[k], sizeof o[k]);
            }
        }
        /* The last n % 8 rows of the blocked columns. */
        for (j0 = 0; j0 < j_from; j0++)
            for (k = n8; k < n; k++)
                buf[j0 * ld + k] = *(const float *)(x + k * rs + j0 * cs);
    }
#endif
    (void)n8;
    EDF_STRIPS(float);
}

EDF_MULTIVERSION
void edf_transpose64(const char *x, ptrdiff_t n, ptrdiff_t d, ptrdiff_t rs, ptrdiff_t cs,
                     double *buf, ptrdiff_t ld)
{
    ptrdiff_t j_from = 0, n4 = 0;
#ifdef EDF_SHUFFLE
    if (cs == (ptrdiff_t)sizeof(double) && d >= 4) {
        ptrdiff_t i0, j0, k;
        n4 = n - n % 4;
        j_from = d - d % 4;
        for (i0 = 0; i0 < n4; i0 += 4) {
            for (j0 = 0; j0 < j_from; j0 += 4) {
                edf_v4d r[4], t[4], o[4];
                for (k = 0; k < 4; k++)
                    memcpy(&r[k], x + (i0 + k) * rs + j0 * cs, sizeof r[k]);
                t[0] = EDF_SHUF(r[0], r[1], 0, 4, 2, 6);
                t[1] = EDF_SHUF(r[0], r[1], 1, 5, 3, 7);
                t[2] = EDF_SHUF(r[2], r[3], 0, 4, 2, 6);
                t[3] = EDF_SHUF(r[2], r[3], 1, 5, 3, 7);
                o[0] = EDF_SHUF(t[0], t[2], 0, 1, 4, 5);
                o[1] = EDF_SHUF(t[1], t[3], 0, 1, 4, 5);
                o[2] = EDF_SHUF(t[0], t[2], 2, 3, 6, 7);
                o[3] = EDF_SHUF(t[1], t[3], 2, 3, 6, 7);
                for (k = 0; k < 4; k++)
                    memcpy(buf + (j0 + k) * ld + i0, &o[k], sizeof o[k]);
            }
        }
        for (j0 = 0; j0 < j_from; j0++)
            for (k = n4; k < n; k++)
                buf[j0 * ld + k] = *(const double *)(x + k * rs + j0 * cs);
    }
#endif
    (void)n4;
    EDF_STRIPS(double);
}

/* Smallest float >= g and largest float <= g. */
static float edf_ceil32(double g)
{
    float f = (float)g;
    if ((double)f < g)
        f = nextafterf(f, INFINITY);
    return f;
}

static float edf_floor32(double g)
{
    float f = (float)g;
    if ((double)f > g)
        f = nextafterf(f, -INFINITY);
    return f;
}

/* base[c] = #(keys whose cell is below c) for c = 0..L, then thr and the crowded flags. */
#define EDF_FILL(cellfn, lo, inv, top)                                                          \
    do {                                                                                        \
        int64_t p_ = 0, c_;                                                                     \
        for (c_ = 0; c_ <= L; c_++) {                                                           \
            while (p_ < K && cellfn(keys[p_], lo, inv, top) < c_)                               \
                p_++;                                                                           \
            base[c_] = (int32_t)p_;                                                             \
        }                                                                                       \
        for (c_ = 0; c_ < L; c_++) {                                                            \
            int64_t n_ = (int64_t)base[c_ + 1] - base[c_];                                      \
            thr[c_] = n_ ? keys[base[c_]] : INFINITY;                                           \
            if (n_ > 1)                                                                         \
                base[c_] |= EDF_CROWDED;                                                        \
        }                                                                                       \
    } while (0)

void edf_build32(const double *grid, int64_t K, int64_t L, float *keys, int32_t *base, float *thr,
                 edf_tab32 *t)
{
    int64_t k;
    double w, inv = 0.0;
    for (k = 0; k < K; k++)
        keys[k] = edf_ceil32(grid[k]);
    keys[K] = keys[K + 1] = INFINITY;
    if (K > 0) {
        w = (double)keys[K - 1] - (double)keys[0];
        inv = w > 0.0 ? (double)L / w : 0.0;
        if (!(inv < 1e30))
            inv = 0.0;
    }
    t->keys = keys;
    t->base = base;
    t->thr = thr;
    t->L = L;
    t->lo = K > 0 ? keys[0] : 0.0f;
    t->inv = (float)inv;
    t->top = (float)(L - 1);
    t->vmin = K > 0 ? keys[0] : INFINITY;
    t->vmax = K > 0 ? edf_floor32(grid[K - 1]) : -INFINITY;
    EDF_FILL(edf_cell32, t->lo, t->inv, t->top);
}

void edf_build64(const double *grid, int64_t K, int64_t L, int32_t *base, double *thr,
                 edf_tab64 *t)
{
    const double *keys = grid;
    double w, inv = 0.0;
    if (K > 0) {
        w = grid[K - 1] - grid[0];
        inv = w > 0.0 ? (double)L / w : 0.0;
        if (!(inv < 1e300))
            inv = 0.0;
    }
    t->keys = grid;
    t->base = base;
    t->thr = thr;
    t->L = L;
    t->lo = K > 0 ? grid[0] : 0.0;
    t->inv = inv;
    t->top = (double)(L - 1);
    t->vmin = K > 0 ? grid[0] : INFINITY;
    t->vmax = K > 0 ? grid[K - 1] : -INFINITY;
    EDF_FILL(edf_cell64, t->lo, t->inv, t->top);
}
