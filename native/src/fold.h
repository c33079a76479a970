/* The drift fold's per-value kernels (plain C, compiled into edgeops._native._drift).
 *
 * One feature at a time: put each value x in its fine bin #(g <= x) of a sorted reference grid g,
 * add it to the moment sums, and count NaN / out-of-range values. The bin look-up goes through a
 * uniform table of cells over [g[0], g[K-1]]: a monotone cell function maps x to a cell; base[c] is
 * the number of grid keys in cells below c, thr[c] the one key inside the cell (+inf if none), so
 *
 *     bin(x) = base[c] + (x >= thr[c])
 *
 * exactly, with no data-dependent branch. A cell holding two or more keys is flagged (EDF_CROWDED
 * in base[c]) and its values take a binary search among that cell's keys instead.
 *
 * float32 input is compared in float32 against keys ceil32(g) (the smallest float >= g), which
 * gives the same answer as comparing (double)x with g; float64 input uses g itself. Each input
 * type has its own cell table (edf_tab32 / edf_tab64), built by edf_build32 / edf_build64 with the
 * same cell function the fold uses, which is what makes the look-up exact.
 *
 * Sums are float64 in eight interleaved lanes per block of at most EDF_BLOCK values, combined in a
 * fixed order: the result does not depend on the instruction set the kernel was compiled for.
 */
#ifndef EDGEOPS_FOLD_H
#define EDGEOPS_FOLD_H

#include <stddef.h>
#include <stdint.h>

/* Values per block of the contiguous kernels (their scratch lives on the stack). */
#define EDF_BLOCK 2048
/* Flag in base[c]: the cell holds two or more keys. */
#define EDF_CROWDED INT32_MIN

typedef struct {
    const float *keys;   /* K keys ceil32(g), then two +inf */
    const int32_t *base; /* L + 1 entries (base[L] = K), EDF_CROWDED or-ed into crowded cells */
    const float *thr;    /* L entries */
    int64_t L;
    float lo, inv, top;  /* cell(x) = (int) min(max((x - lo) * inv, 0), top) */
    float vmin, vmax;    /* in range: vmin <= x <= vmax, i.e. g[0] <= (double)x <= g[K-1] */
} edf_tab32;

typedef struct {
    const double *keys;  /* the grid g, then two +inf */
    const int32_t *base;
    const double *thr;
    int64_t L;
    double lo, inv, top;
    double vmin, vmax;
} edf_tab64;

typedef struct {
    int64_t K;      /* grid size; the counts row has at least K + 2 slots (slot K + 1 is scratch) */
    double g0;      /* g[0] and g[K-1] (0 when K = 0), for the Wasserstein tails */
    double glast;
    double shift;   /* moments are sums of x - shift and its square */
} edf_feat;

typedef struct {
    int64_t nn, nb, na, ni; /* NaN, below g[0], above g[K-1], +-inf */
    double s1, s2;          /* sums of x - shift and (x - shift)^2 over finite values */
    double tl, th;          /* sums of g[0] - x below and x - g[K-1] above (finite values) */
} edf_acc;

/* Table building: base (L + 1 entries), thr (L), keys (K + 2, float32 only; the float64 keys are
 * the grid itself, which must be followed by two +inf). L >= 1, 0 <= K < 2^31. */
void edf_build32(const double *grid, int64_t K, int64_t L, float *keys, int32_t *base, float *thr,
                 edf_tab32 *t);
void edf_build64(const double *grid, int64_t K, int64_t L, int32_t *base, double *thr,
                 edf_tab64 *t);

/* Bin of one value (NaN goes to bin 0; callers filter it). */
int64_t edf_bin32(const edf_tab32 *t, float x);
int64_t edf_bin64(const edf_tab64 *t, double x);

/* Fold m >= 0 contiguous values of one feature into cnt (its counts row) and acc. */
void edf_fold32(const edf_tab32 *t, const edf_feat *f, const float *x, ptrdiff_t m, int64_t *cnt,
                edf_acc *acc);
void edf_fold64(const edf_tab64 *t, const edf_feat *f, const double *x, ptrdiff_t m, int64_t *cnt,
                edf_acc *acc);

/* The state arrays of all features (one entry per feature), for edf_rows*. */
typedef struct {
    int64_t *nn, *nb, *na, *ni;
    double *s1, *s2, *tl, *th;
} edf_state;

/* The per-feature table parameters side by side (feature j's base and thr tables start at off[j]
 * in the flat arrays), so the small-batch kernel can work across the features of a row. */
typedef struct {
    const int32_t *base, *off;
    const float *thr, *lo, *inv, *top, *vmin, *vmax;
    const double *shift;
} edf_cols32;

typedef struct {
    const int32_t *base, *off;
    const double *thr, *lo, *inv, *top, *vmin, *vmax;
    const double *shift;
} edf_cols64;

/* Fold n rows of d features (element (i, j) at x + i * rs + j * cs bytes) straight into the state:
 * the small-batch path, one call per batch. With cs the element size the features of a row are
 * binned together (vectorised); otherwise value by value. counts has d rows of cstride entries;
 * tabs and feats have d entries. */
void edf_rows32(const edf_tab32 *tabs, const edf_cols32 *cols, const edf_feat *feats,
                const char *x, ptrdiff_t n, ptrdiff_t d, ptrdiff_t rs, ptrdiff_t cs,
                int64_t *counts, ptrdiff_t cstride, const edf_state *st);
void edf_rows64(const edf_tab64 *tabs, const edf_cols64 *cols, const edf_feat *feats,
                const char *x, ptrdiff_t n, ptrdiff_t d, ptrdiff_t rs, ptrdiff_t cs,
                int64_t *counts, ptrdiff_t cstride, const edf_state *st);

/* Column j of n rows (element (i, j) at x + i * rs + j * cs bytes) to buf + j * ld, in strips of 16
 * rows (the strip stays in L1 while each column gets 16 values). */
void edf_transpose32(const char *x, ptrdiff_t n, ptrdiff_t d, ptrdiff_t rs, ptrdiff_t cs,
                     float *buf, ptrdiff_t ld);
void edf_transpose64(const char *x, ptrdiff_t n, ptrdiff_t d, ptrdiff_t rs, ptrdiff_t cs,
                     double *buf, ptrdiff_t ld);

/* Which variant of the contiguous kernels this CPU runs: "avx2", "default" or "portable". */
const char *edf_kernel_isa(void);

#endif
