/* Body of the fold kernels for one input type, included by fold.c once per type with
 *   EDF_T   the element type (float / double)
 *   EDF_TAB the table type (edf_tab32 / edf_tab64)
 *   EDF_S   the name suffix (32 / 64)
 * Everything here is static except the edf_*EDF_S entry points declared in fold.h.
 */

#define EDF_CAT_(a, b) a##b
#define EDF_CAT(a, b) EDF_CAT_(a, b)
#define EDF_FN(name) EDF_CAT(name, EDF_S)

/* The cell function: monotone non-decreasing in x (NaN goes to cell 0), shared by the table build
 * and the fold. */
EDF_INLINE int32_t EDF_FN(edf_cell)(EDF_T x, EDF_T lo, EDF_T inv, EDF_T top)
{
    EDF_T c = (x - lo) * inv;
    c = c > (EDF_T)0 ? c : (EDF_T)0;
    c = c < top ? c : top;
    return (int32_t)c;
}

/* #(keys[a..b) <= x) + a for sorted keys: the crowded-cell path. */
EDF_INLINE int64_t EDF_FN(edf_search)(const EDF_T *keys, int64_t a, int64_t b, EDF_T x)
{
    while (a < b) {
        int64_t mid = (a + b) >> 1;
        if (keys[mid] <= x)
            a = mid + 1;
        else
            b = mid;
    }
    return a;
}

EDF_INLINE int64_t EDF_FN(edf_lookup)(const EDF_TAB *t, EDF_T x)
{
    int32_t c = EDF_FN(edf_cell)(x, t->lo, t->inv, t->top);
    int32_t a = t->base[c];
    if (a >= 0)
        return a + (x >= t->thr[c]);
    return EDF_FN(edf_search)(t->keys, a & INT32_MAX, t->base[c + 1] & INT32_MAX, x);
}

int64_t EDF_FN(edf_bin)(const EDF_TAB *t, EDF_T x)
{
    return EDF_FN(edf_lookup)(t, x);
}

/* Bookkeeping of a NaN or out-of-range value; returns the counts slot it goes to (K + 1, the
 * scratch slot, for NaN). */
EDF_INLINE int64_t EDF_FN(edf_outside)(const EDF_TAB *t, const edf_feat *f, EDF_T v,
                                          edf_acc *acc)
{
    if (v != v) {
        acc->nn++;
        return f->K + 1;
    }
    if (v < t->vmin) {
        acc->nb++;
        if (v == -(EDF_T)INFINITY)
            acc->ni++;
        else
            acc->tl += f->g0 - (double)v;
        return 0;
    }
    acc->na++;
    if (v == (EDF_T)INFINITY)
        acc->ni++;
    else
        acc->th += (double)v - f->glast;
    return f->K;
}

/* Sums of x - sh and its square in eight lanes (lane k takes the values i = k mod 8), then the last
 * m % 8 values in order, finite values only when `masked`. The combination order is fixed, so the
 * result is the same whatever vector width the compiler used. */
EDF_INLINE double EDF_FN(edf_dev)(EDF_T v, double sh, int masked)
{
    return (!masked || v - v == (EDF_T)0) ? (double)v - sh : 0.0;
}

EDF_INLINE void EDF_FN(edf_moments)(const EDF_T *restrict x, ptrdiff_t m, double sh, int masked,
                                    double *s1, double *s2)
{
    double a[8], b[8];
    double ta = 0.0, tb = 0.0;
    ptrdiff_t i = 0;
    int k;
#ifdef EDF_VECTOR_EXT
    const edf_v4d shv = {sh, sh, sh, sh}, zero = {0.0, 0.0, 0.0, 0.0};
    edf_v4d a0 = zero, a1 = zero, b0 = zero, b1 = zero;
    for (; i + 8 <= m; i += 8) {
        edf_v4d x0, x1, d0, d1;
        EDF_CAT(EDF_LOAD4_, EDF_S)(x0, x + i);
        EDF_CAT(EDF_LOAD4_, EDF_S)(x1, x + i + 4);
        d0 = x0 - shv;
        d1 = x1 - shv;
        if (masked) {
            /* Finite values only: x - x is 0 for them, NaN for +-inf and NaN. */
            d0 = (edf_v4d)((edf_v4l)d0 & (edf_v4l)(x0 - x0 == zero));
            d1 = (edf_v4d)((edf_v4l)d1 & (edf_v4l)(x1 - x1 == zero));
        }
        a0 += d0;
        a1 += d1;
        b0 += d0 * d0;
        b1 += d1 * d1;
    }
    for (k = 0; k < 4; k++) {
        a[k] = a0[k];
        a[k + 4] = a1[k];
        b[k] = b0[k];
        b[k + 4] = b1[k];
    }
#else
    for (k = 0; k < 8; k++)
        a[k] = b[k] = 0.0;
    for (; i + 8 <= m; i += 8) {
        for (k = 0; k < 8; k++) {
            double d = EDF_FN(edf_dev)(x[i + k], sh, masked);
            a[k] += d;
            b[k] += d * d;
        }
    }
#endif
    for (; i < m; i++) {
        double d = EDF_FN(edf_dev)(x[i], sh, masked);
        ta += d;
        tb += d * d;
    }
    *s1 += (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) + ta;
    *s2 += (((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]))) + tb;
}

/* The bin of a value the branch-free pass could not place: one in a crowded cell, NaN (the scratch
 * slot K + 1) or out of range (with its bookkeeping). */
EDF_INLINE int32_t EDF_FN(edf_slow)(const EDF_TAB *t, const edf_feat *f, EDF_T v, edf_acc *acc)
{
    if (v >= t->vmin && v <= t->vmax)
        return (int32_t)EDF_FN(edf_lookup)(t, v);
    return (int32_t)EDF_FN(edf_outside)(t, f, v, acc);
}

/* One block of m <= EDF_BLOCK contiguous values. */
EDF_INLINE void EDF_FN(edf_block)(const EDF_TAB *t, const edf_feat *f, const EDF_T *restrict x,
                                  ptrdiff_t m, int64_t *restrict cnt, edf_acc *acc)
{
    int32_t bins[EDF_BLOCK];
    const int32_t *restrict base = t->base;
    const EDF_T *restrict thr = t->thr;
    const EDF_T lo = t->lo, inv = t->inv, top = t->top, vmin = t->vmin, vmax = t->vmax;
    int32_t outside = 0;
    ptrdiff_t i;

    /* 1. Bins, branch-free and vectorised (cells in SIMD, the two table reads as gathers). A
     * negative bin marks a value of a crowded cell or one outside [vmin, vmax] (or NaN). */
    for (i = 0; i < m; i++) {
        EDF_T v = x[i];
        int32_t c = EDF_FN(edf_cell)(v, lo, inv, top);
        int32_t in = (v >= vmin) & (v <= vmax);
        int32_t b = base[c] + (v >= thr[c]);
        bins[i] = in ? b : -1;
        outside |= !in;
    }
    /* 2. Moments (vectorised; finite values only if the block has others). */
    EDF_FN(edf_moments)(x, m, f->shift, outside, &acc->s1, &acc->s2);
    /* 3. Counts (scalar: neighbouring values may share a bin), the marked values on the way. */
    for (i = 0; i + 4 <= m; i += 4) {
        int32_t b0 = bins[i], b1 = bins[i + 1], b2 = bins[i + 2], b3 = bins[i + 3];
        if ((b0 | b1 | b2 | b3) < 0) {
            if (b0 < 0)
                b0 = EDF_FN(edf_slow)(t, f, x[i], acc);
            if (b1 < 0)
                b1 = EDF_FN(edf_slow)(t, f, x[i + 1], acc);
            if (b2 < 0)
                b2 = EDF_FN(edf_slow)(t, f, x[i + 2], acc);
            if (b3 < 0)
                b3 = EDF_FN(edf_slow)(t, f, x[i + 3], acc);
        }
        cnt[b0]++;
        cnt[b1]++;
        cnt[b2]++;
        cnt[b3]++;
    }
    for (; i < m; i++) {
        int32_t b = bins[i];
        if (b < 0)
            b = EDF_FN(edf_slow)(t, f, x[i], acc);
        cnt[b]++;
    }
    if (outside)
        cnt[f->K + 1] = 0;
}

EDF_MULTIVERSION
void EDF_FN(edf_fold)(const EDF_TAB *t, const edf_feat *f, const EDF_T *x, ptrdiff_t m,
                      int64_t *cnt, edf_acc *acc)
{
    ptrdiff_t i0, n;
    for (i0 = 0; i0 < m; i0 += n) {
        n = m - i0 < EDF_BLOCK ? m - i0 : EDF_BLOCK;
        EDF_FN(edf_block)(t, f, x + i0, n, cnt, acc);
    }
}

/* Bookkeeping of one NaN / out-of-range value of feature j straight into the state. */
EDF_INLINE int64_t EDF_FN(edf_outside_st)(const EDF_TAB *t, const edf_feat *f, EDF_T v,
                                          const edf_state *st, ptrdiff_t j)
{
    edf_acc a = {0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0};
    int64_t b = EDF_FN(edf_outside)(t, f, v, &a);
    st->nn[j] += a.nn;
    st->nb[j] += a.nb;
    st->na[j] += a.na;
    st->ni[j] += a.ni;
    st->tl[j] += a.tl;
    st->th[j] += a.th;
    return b;
}

/* Features per chunk of a row in edf_rows (scratch on the stack). */
#define EDF_ROW_CHUNK 256

EDF_MULTIVERSION
void EDF_FN(edf_rows)(const EDF_TAB *tabs, const EDF_CAT(edf_cols, EDF_S) *cols,
                      const edf_feat *feats, const char *x, ptrdiff_t n, ptrdiff_t d, ptrdiff_t rs,
                      ptrdiff_t cs, int64_t *counts, ptrdiff_t cstride, const edf_state *st)
{
    double *restrict s1 = st->s1, *restrict s2 = st->s2;
    ptrdiff_t i, j, j0, k, m;
    if (cs != (ptrdiff_t)sizeof(EDF_T)) {
        for (i = 0; i < n; i++) {
            const char *row = x + i * rs;
            for (j = 0; j < d; j++) {
                const EDF_TAB *t = tabs + j;
                EDF_T v = *(const EDF_T *)(row + j * cs);
                int64_t b;
                if (v >= t->vmin && v <= t->vmax)
                    b = EDF_FN(edf_lookup)(t, v);
                else
                    b = EDF_FN(edf_outside_st)(t, feats + j, v, st, j);
                if (b <= feats[j].K)
                    counts[j * cstride + b]++;
                if (v - v == (EDF_T)0) {
                    double dv = (double)v - feats[j].shift;
                    s1[j] += dv;
                    s2[j] += dv * dv;
                }
            }
        }
        return;
    }
    {
        const int32_t *restrict base = cols->base, *restrict off = cols->off;
        const EDF_T *restrict thr = cols->thr, *restrict lo = cols->lo, *restrict inv = cols->inv;
        const EDF_T *restrict top = cols->top, *restrict vmin = cols->vmin;
        const EDF_T *restrict vmax = cols->vmax;
        const double *restrict shift = cols->shift;
        int32_t bins[EDF_ROW_CHUNK];
        for (i = 0; i < n; i++) {
            const EDF_T *restrict row = (const EDF_T *)(x + i * rs);
            for (j0 = 0; j0 < d; j0 += m) {
                int32_t crowded = 0, outside = 0;
                m = d - j0 < EDF_ROW_CHUNK ? d - j0 : EDF_ROW_CHUNK;
                /* Bins and moments of m features at once (vectorised across features). */
                for (k = 0; k < m; k++) {
                    j = j0 + k;
                    EDF_T v = row[j];
                    int32_t o = off[j] + EDF_FN(edf_cell)(v, lo[j], inv[j], top[j]);
                    int32_t b = base[o] + (v >= thr[o]);
                    double xd = (double)v, dv = xd - shift[j];
                    dv = xd - xd == 0.0 ? dv : 0.0; /* finite values only */
                    bins[k] = b;
                    crowded |= b;
                    outside |= !(v >= vmin[j]) | !(v <= vmax[j]);
                    s1[j] += dv;
                    s2[j] += dv * dv;
                }
                if (crowded < 0) {
                    for (k = 0; k < m; k++)
                        if (bins[k] < 0)
                            bins[k] = (int32_t)EDF_FN(edf_lookup)(tabs + j0 + k, row[j0 + k]);
                }
                if (outside) {
                    for (k = 0; k < m; k++) {
                        EDF_T v = row[j0 + k];
                        if (!(v >= vmin[j0 + k] && v <= vmax[j0 + k]))
                            bins[k] = (int32_t)EDF_FN(edf_outside_st)(tabs + j0 + k, feats + j0 + k,
                                                                      v, st, j0 + k);
                    }
                }
                for (k = 0; k < m; k++)
                    counts[(j0 + k) * cstride + bins[k]]++;
                if (outside) {
                    for (k = 0; k < m; k++)
                        counts[(j0 + k) * cstride + feats[j0 + k].K + 1] = 0;
                }
            }
        }
    }
}

#undef EDF_FN
#undef EDF_CAT
#undef EDF_CAT_
