/*
 * hf_maxsup fused loss kernel: cross-entropy / label smoothing / Max Suppression,
 * forward value and gradient in ONE sweep over the logits.
 *
 * Built on first use by hf_maxsup/kernels/_c.py (gcc/cc, -O3 [-march=native]) and loaded with ctypes.
 * No Python headers, no torch headers: plain C99 + GCC vector extensions + pthreads.
 *
 * Per row z (K logits, class dim contiguous), read once from memory in blocks of HFM_BS elements:
 *   sub-pass a (memory -> L1): per-lane running max, sum z, and when needed sum t*z (soft targets)
 *             and the two halves of the LS term (hard labels);
 *   sub-pass b (L1):          e = exp(z - M_running) into a per-thread fp32 scratch row (L2 resident),
 *             block sum of e; the running sum is rescaled when the running max grows (online softmax,
 *             one rescale per block, never per element);
 *   pass 3 (L2 -> memory):    g = (e * exp(M_block - M) / S - c0 - c1 * t) * scale written once to the
 *             gradient buffer (which may be the logits' own storage: in-place mode), then the one or two
 *             special entries (the label y and the argmax) are rewritten from their exact formula.
 * The argmax (MaxSup) is the FIRST index attaining the max (torch.max's rule for ties): the running max
 * first reaches its final value M in a known block, which is scanned (L2) for the first z == M.
 * Loss value and gradient both come from this single sweep; the gradient is never recomputed.
 *
 * No -ffast-math: NaN / inf must keep their meaning and the max tie rule must hold.  The vector code
 * is written explicitly (16-lane GCC vector types), so no reassociation flag is needed for it.
 * Sums are accumulated per block in fp32 lanes and across blocks in double.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#define HFM_ABI_VERSION 5 /* 5: out[5] is the misclassified count */
#define VL 16
#define HFM_BS 2048 /* block length (elements); multiple of VL; 8 KiB of fp32 in L1 */
#define HFM_NSUMS 6 /* the sums a run returns in out[] */

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef uint32_t vu __attribute__((vector_size(VL * 4)));
typedef uint16_t vu16 __attribute__((vector_size(VL * 2)));
#ifndef HFM_NO_F16
typedef _Float16 vh __attribute__((vector_size(VL * 2)));
#endif

enum { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2 };
enum { K_CE = 0, K_LS = 1, K_MAXSUP = 2 };

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------------------------------ */
/* argument block, mirrored by a ctypes.Structure in _c.py (keep the order and the types!)           */
typedef struct {
    const void *logits;    /* row r = o * n_inner + i starts at logits + (o * ls_outer + i * ls_inner) */
    void *grad;            /* NULL: no gradient (forward only); may equal logits (in place)           */
    const int64_t *labels; /* N contiguous int64, or NULL for soft targets                            */
    const void *soft;      /* N x K contiguous soft targets, or NULL                                  */
    float *row_loss;       /* N contiguous fp32 per-row losses, or NULL                               */
    int64_t n_outer, n_inner, ls_outer, ls_inner; /* logits layout, in elements */
    int64_t gs_outer, gs_inner;                   /* gradient layout, in elements */
    int64_t K;
    int64_t ignore_index;
    double out[8]; /* out: [0] sum loss, [1] sum ce, [2] sum reg, [3] sum ls_reg, [4] sum ls_amp, [5] misclassified */
    float alpha;
    float gscale;       /* the gradient is written times this factor */
    int32_t dtype;      /* logits and gradient dtype */
    int32_t soft_dtype; /* dtype of soft targets */
    int32_t kind;
    int32_t want_split; /* 1: accumulate the LS decomposition (LS, hard labels) */
    int32_t nthreads;
} hfm_args;

int hfm_abi_version(void) { return HFM_ABI_VERSION; }
int64_t hfm_args_size(void) { return (int64_t)sizeof(hfm_args); }
int hfm_supports_dtype(int dt) {
#ifdef HFM_NO_F16
    return dt == DT_F32 || dt == DT_BF16;
#else
    return dt == DT_F32 || dt == DT_BF16 || dt == DT_F16;
#endif
}

/* ------------------------------------------------------------------------------------------------ */
/* vector helpers                                                                                   */
ALWAYS_INLINE vf vsplat(float x) { return (vf){0} + x; }
ALWAYS_INLINE vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
ALWAYS_INLINE vi vseli(vi m, vi a, vi b) { return (m & a) | (~m & b); }
/* max(a, b) = a > b ? a : b, i.e. a NaN in a is ignored (x86 maxps semantics) */
#if defined(__AVX512F__)
ALWAYS_INLINE vf vmaxf(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
#else
ALWAYS_INLINE vf vmaxf(vf a, vf b) { return vsel(a > b, a, b); }
#endif

ALWAYS_INLINE vf vload(const void *p, int64_t i, int dt) {
    vf v;
    if (dt == DT_F32) {
        memcpy(&v, (const float *)p + i, sizeof v);
    } else if (dt == DT_BF16) {
        vu16 h;
        memcpy(&h, (const uint16_t *)p + i, sizeof h);
        v = (vf)(__builtin_convertvector(h, vu) << 16);
    } else {
#ifndef HFM_NO_F16
        vh h;
        memcpy(&h, (const uint16_t *)p + i, sizeof h);
        v = __builtin_convertvector(h, vf);
#else
        v = vsplat(0.f);
#endif
    }
    return v;
}

ALWAYS_INLINE void vstore(void *p, int64_t i, vf v, int dt) {
    if (dt == DT_F32) {
        memcpy((float *)p + i, &v, sizeof v);
    } else if (dt == DT_BF16) { /* round to nearest even (NaN stays NaN for canonical NaNs) */
#if defined(__AVX512BF16__)
        __m256bh hb = _mm512_cvtneps_pbh((__m512)v);
        memcpy((uint16_t *)p + i, &hb, 32);
#else
        vu u = (vu)v;
        u = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        vu16 h = __builtin_convertvector(u, vu16);
        memcpy((uint16_t *)p + i, &h, sizeof h);
#endif
    } else {
#ifndef HFM_NO_F16
        vh h = __builtin_convertvector(v, vh);
        memcpy((uint16_t *)p + i, &h, sizeof h);
#endif
    }
}

/* streaming (non-temporal) store of one vector; p + i must be 64-byte (fp32) / 32-byte (half) aligned */
ALWAYS_INLINE void vstore_nt(void *p, int64_t i, vf v, int dt) {
#if defined(__AVX512F__)
    if (dt == DT_F32) {
        _mm512_stream_ps((float *)p + i, (__m512)v);
        return;
    }
#if defined(__AVX512BF16__)
    if (dt == DT_BF16) {
        __m256bh hb = _mm512_cvtneps_pbh((__m512)v);
        _mm256_stream_si256((__m256i *)((uint16_t *)p + i), (__m256i)hb);
        return;
    }
#endif
#endif
    vstore(p, i, v, dt);
}

ALWAYS_INLINE float sload(const void *p, int64_t i, int dt) {
    if (dt == DT_F32) return ((const float *)p)[i];
    if (dt == DT_BF16) {
        uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
#ifndef HFM_NO_F16
    _Float16 h;
    memcpy(&h, (const uint16_t *)p + i, 2);
    return (float)h;
#else
    return 0.f;
#endif
}

ALWAYS_INLINE void sstore(void *p, int64_t i, float f, int dt) {
    if (dt == DT_F32) {
        ((float *)p)[i] = f;
    } else if (dt == DT_BF16) {
        uint32_t u;
        memcpy(&u, &f, 4);
        if (f != f) u = 0x7FC00000u;
        u = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        ((uint16_t *)p)[i] = (uint16_t)u;
    } else {
#ifndef HFM_NO_F16
        _Float16 h = (_Float16)f;
        memcpy((uint16_t *)p + i, &h, 2);
#endif
    }
}

/* exp(x) for x <= 0 (Cephes expf polynomial, rel. error ~1e-7).  Below -87 (exp < 1.6e-38, below float32's
 * normal range and nothing next to the row's sum >= 1) the result is 0; NaN is not propagated (NaN rows are detected
 * elsewhere). */
ALWAYS_INLINE vf vexp_nonpos(vf x) {
    const vf magic = vsplat(12582912.0f); /* 1.5 * 2^23: round to nearest integer */
    const vi below = x < vsplat(-87.0f);
    x = vmaxf(x, vsplat(-87.0f));
    vf t = x * vsplat(1.44269504088896341f) + magic;
    vf n = t - magic;
    vi ni = (vi)t - (vi)magic;
    vf r = x - n * vsplat(0.693359375f);
    r = r - n * vsplat(-2.12194440e-4f);
    vf p = vsplat(1.9875691500E-4f);
    p = p * r + vsplat(1.3981999507E-3f);
    p = p * r + vsplat(8.3334519073E-3f);
    p = p * r + vsplat(4.1665795894E-2f);
    p = p * r + vsplat(1.6666665459E-1f);
    p = p * r + vsplat(5.0000001201E-1f);
    vf y = p * (r * r) + r + vsplat(1.0f);
#if defined(__AVX512F__)
    (void)ni;
    return vsel(below, vsplat(0.f), (vf)_mm512_scalef_ps((__m512)y, (__m512)n));
#else
    vf scale = (vf)((ni + 127) << 23);
    return vsel(below, vsplat(0.f), y * scale);
#endif
}

ALWAYS_INLINE float hmax(vf v) {
    float m = v[0];
    for (int l = 1; l < VL; l++) m = v[l] > m ? v[l] : m;
    return m;
}
ALWAYS_INLINE double hsum(vf v) {
    /* pairwise: lanes 0..7 + 8..15, ... */
    float s8[8], s4[4];
    for (int l = 0; l < 8; l++) s8[l] = v[l] + v[l + 8];
    for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
    return (double)((s4[0] + s4[2]) + (s4[1] + s4[3]));
}

/* ------------------------------------------------------------------------------------------------ */
/* rows are handed out in chunks from a shared counter (a descheduled thread on a busy machine does not
 * hold the others up); per-chunk sums are added in chunk order at the end, so results do not depend on
 * which thread did what. */
typedef struct {
    const hfm_args *a;
    int64_t N, chunk_rows, n_chunks;
    int64_t next; /* atomic */
    float gscale;
    int stream;   /* write the gradient with non-temporal stores */
    int failed;   /* atomic; informational (other threads take over the rows) */
    double *sums; /* n_chunks x HFM_NSUMS */
} hfm_job;

/* first k in [k0, k1) with z[k] == M (M is attained there) */
ALWAYS_INLINE int64_t find_first(const void *z, int64_t k0, int64_t k1, float M, const int DT) {
    int64_t k = k0;
#if defined(__AVX512F__)
    const __m512 vM = _mm512_set1_ps(M);
    for (; k + VL <= k1; k += VL) {
        __mmask16 m = _mm512_cmp_ps_mask((__m512)vload(z, k, DT), vM, _CMP_EQ_OQ);
        if (m) return k + __builtin_ctz((unsigned)m);
    }
#endif
    for (; k < k1; k++)
        if (sload(z, k, DT) == M) return k;
    return k0;
}

/* What the sweep over a row gathers. M: the row max; S: sum exp(z - M); bm[b]: the running max after block b. */
typedef struct {
    float M;
    double S, sumz, sumtz, spos, sneg;
} row_stats;

/* The sums of sweep_row over the vector part [k0, kv) of a block, in double: the rare path taken when a float32 lane
 * overflowed (logits near the float32 limit), so that such rows are exact where the terms themselves fit. */
static void block_sums_double(const void *z, const void *t, int64_t k0, int64_t kv, float zy, int want_split,
                              double *bz, double *btz, double *bp, double *bn, const int DT, const int SD) {
    *bz = *btz = *bp = *bn = 0;
    for (int64_t k = k0; k < kv; k++) {
        const double x = sload(z, k, DT);
        *bz += x;
        if (SD >= 0) *btz += (double)sload(t, k, SD) * x;
        if (want_split) {
            const double d = (double)zy - x;
            if (d > 0) *bp += d; else *bn += d;
        }
    }
}

/* The one read of a row from memory, block by block: per-lane running max, the sums (z, t*z for soft targets, the
 * two halves of the LS term), then exp(z - running max) from L1 into the scratch row, with the running sum rescaled
 * once per block when the max grows (online softmax). DT, SD are compile-time constants after inlining. */
ALWAYS_INLINE row_stats sweep_row(const void *z, const void *t, int64_t K, float zy, int want_split, float *scratch,
                                  float *bm, const int DT, const int SD) {
    const int hard = SD < 0;
    const int64_t nb = (K + HFM_BS - 1) / HFM_BS;
    vf vmax = vsplat(-INFINITY); /* per-lane running max over the row so far */
    float tmax = -INFINITY;      /* scalar tail (last block only) */
    row_stats st = {-INFINITY, 0, 0, 0, 0, 0};
    const vf vzy = vsplat(zy);
    for (int64_t b = 0; b < nb; b++) {
        const int64_t k0 = b * HFM_BS;
        const int64_t k1 = k0 + HFM_BS < K ? k0 + HFM_BS : K;
        const int64_t kv = k0 + ((k1 - k0) / VL) * VL;
        vf az = vsplat(0.f), atz = vsplat(0.f), ap = vsplat(0.f), an = vsplat(0.f);
        for (int64_t k = k0; k < kv; k += VL) { /* memory -> L1: running max, sums */
            vf x = vload(z, k, DT);
            vmax = vmaxf(x, vmax);
            az += x;
            if (!hard) atz += vload(t, k, SD) * x;
            if (want_split) {
                vf d = vzy - x;
                vi pos = d > vsplat(0.f);
                ap += (vf)((vi)d & pos);
                an += (vf)((vi)d & ~pos);
            }
        }
        double ptz = 0, pp = 0, pn = 0, pz = 0;
        for (int64_t k = kv; k < k1; k++) {
            float x = sload(z, k, DT);
            if (x > tmax) tmax = x;
            pz += x;
            if (!hard) ptz += (double)sload(t, k, SD) * x;
            if (want_split) {
                double d = (double)zy - x;
                if (d > 0) pp += d; else pn += d;
            }
        }
        double bz = hsum(az), btz = hard ? 0 : hsum(atz), bp = want_split ? hsum(ap) : 0, bn = want_split ? hsum(an) : 0;
        if (!isfinite(bz) || !isfinite(btz) || !isfinite(bp) || !isfinite(bn)) /* fp32 lanes overflowed (|z| ~ 1e38) */
            block_sums_double(z, t, k0, kv, zy, want_split, &bz, &btz, &bp, &bn, DT, SD);
        st.sumz += bz + pz;
        if (!hard) st.sumtz += btz + ptz;
        if (want_split) { st.spos += bp + pp; st.sneg += bn + pn; }
        float Mb = hmax(vmax); /* online softmax update, once per block */
        if (tmax > Mb) Mb = tmax;
        if (Mb > st.M) {
            if (st.S != 0) st.S *= exp((double)st.M - (double)Mb);
            st.M = Mb;
        }
        bm[b] = st.M;
        if (st.M == -INFINITY) continue; /* everything so far is -inf (or NaN): e = 0, handled by the caller */
        const vf vM = vsplat(st.M);      /* L1 -> scratch: exp of the block */
        vf es = vsplat(0.f);
        for (int64_t k = k0; k < kv; k += VL) {
            vf e = vexp_nonpos(vload(z, k, DT) - vM);
            memcpy(scratch + k, &e, sizeof e);
            es += e;
        }
        double pe = 0;
        for (int64_t k = kv; k < k1; k++) {
            float e = expf(sload(z, k, DT) - st.M);
            scratch[k] = e;
            pe += e;
        }
        st.S += hsum(es) + pe;
    }
    return st;
}

/* The first index attaining the max M: it lies in the first block after which the running max is M, and before
 * `until` (K, or one past a class known to attain M: the scan stops there). */
ALWAYS_INLINE int64_t row_argmax(const void *z, const float *bm, int64_t K, float M, int64_t until, const int DT) {
    const int64_t nb = (K + HFM_BS - 1) / HFM_BS;
    int64_t bs = 0;
    while (bs < nb - 1 && bm[bs] != M) bs++;
    int64_t k1 = (bs + 1) * HFM_BS < K ? (bs + 1) * HFM_BS : K;
    if (until < k1) k1 = until;
    return find_first(z, bs * HFM_BS, k1, M, DT);
}

/* One block of the gradient, g = e * f - C0 - C1 t, with the vector store chosen outside the loop. */
ALWAYS_INLINE void grad_block(void *g, const void *t, const float *scratch, int64_t k0, int64_t kv, vf vfac, vf vC0,
                              vf vC1, const int nt_store, const int DT, const int SD) {
    for (int64_t k = k0; k < kv; k += VL) {
        vf e;
        memcpy(&e, scratch + k, sizeof e);
        vf gv = e * vfac - vC0;
        if (SD >= 0) gv -= vC1 * vload(t, k, SD);
        if (nt_store) vstore_nt(g, k, gv, DT);
        else vstore(g, k, gv, DT);
    }
}

/* The gradient of the row from the scratch row, written once: g = p * scale - C0 - C1 t, p = e * exp(bm[b] - M) / S. */
ALWAYS_INLINE void write_grad(void *g, const void *t, const float *scratch, const float *bm, int64_t K, float M,
                              double invS, float scale, float c0, float c1, const int stream, const int DT,
                              const int SD) {
    const int hard = SD < 0;
    const int64_t nb = (K + HFM_BS - 1) / HFM_BS;
    const vf vC0 = vsplat(c0 * scale), vC1 = vsplat(c1 * scale);
    for (int64_t b = 0; b < nb; b++) {
        const int64_t k0 = b * HFM_BS;
        const int64_t k1 = k0 + HFM_BS < K ? k0 + HFM_BS : K;
        const int64_t kv = k0 + ((k1 - k0) / VL) * VL;
        const float f = bm[b] == -INFINITY ? 0.f : (float)(exp((double)bm[b] - (double)M) * invS * (double)scale);
        if (f == 0.f) { /* the whole block underflows (or was all -inf): p = 0, scratch not written */
            for (int64_t k = k0; k < kv; k += VL) {
                vf gv = -vC0;
                if (!hard) gv -= vC1 * vload(t, k, SD);
                vstore(g, k, gv, DT);
            }
            for (int64_t k = kv; k < k1; k++)
                sstore(g, k, -c0 * scale - (hard ? 0.f : c1 * scale * sload(t, k, SD)), DT);
            continue;
        }
        const int aligned = (((uintptr_t)g + (uintptr_t)k0 * (DT == DT_F32 ? 4 : 2)) & (DT == DT_F32 ? 63 : 31)) == 0;
        if (stream && aligned) grad_block(g, t, scratch, k0, kv, vsplat(f), vC0, vC1, 1, DT, SD);
        else grad_block(g, t, scratch, k0, kv, vsplat(f), vC0, vC1, 0, DT, SD);
        for (int64_t k = kv; k < k1; k++) {
            float gv = scratch[k] * f - c0 * scale;
            if (!hard) gv -= c1 * scale * sload(t, k, SD);
            sstore(g, k, gv, DT);
        }
    }
}

/* The label's and the argmax's entries, rewritten from their exact formula in double (same scratch values). */
ALWAYS_INLINE void fix_special_entries(const hfm_args *a, void *g, const void *t, const float *scratch,
                                       const float *bm, int64_t y, int64_t amax, float M, double invS, float scale,
                                       float c0, float c1, const int DT, const int SD) {
    const int hard = SD < 0;
    const int64_t js[2] = {hard ? y : -1, a->kind == K_MAXSUP ? amax : -1};
    for (int q = 0; q < 2; q++) {
        const int64_t j = js[q];
        if (j < 0 || (q == 1 && j == js[0])) continue;
        const int64_t bj = j / HFM_BS;
        double p = bm[bj] == -INFINITY ? 0.0 : (double)scratch[j] * exp((double)bm[bj] - (double)M) * invS;
        double gj = p - (double)c0;
        if (hard) { if (j == y) gj -= (double)c1; }
        else gj -= (double)c1 * (double)sload(t, j, SD);
        if (a->kind == K_MAXSUP && j == amax) gj += (double)a->alpha;
        sstore(g, j, (float)(gj * (double)scale), DT);
    }
}

ALWAYS_INLINE void fill_nan(void *g, int64_t K, const int DT) {
    const vf vn = vsplat(NAN);
    int64_t k = 0;
    for (; k + VL <= K; k += VL) vstore(g, k, vn, DT);
    for (; k < K; k++) sstore(g, k, NAN, DT);
}

/* One kept row: sweep, terms, and (when g is set) the gradient. DT, SD (soft dtype or -1 for hard labels) are
 * compile-time constants after inlining. */
ALWAYS_INLINE void row_kernel(const hfm_args *a, const void *z, void *g, int64_t r, int64_t y, float scale,
                              float *scratch, float *bm, double *sums, const int stream, const int DT,
                              const int SD) {
    const int64_t K = a->K;
    const int kind = a->kind;
    const int hard = SD < 0;
    const int want_split = a->want_split && hard && kind == K_LS;
    const void *t = hard ? NULL : (const char *)a->soft + (size_t)r * (size_t)K * (SD == DT_F32 ? 4 : 2);
    const float zy = hard ? sload(z, y, DT) : 0.f;
    const row_stats st = sweep_row(z, t, K, zy, want_split, scratch, bm, DT, SD);
    const float M = st.M;
    const int bad = (st.sumz != st.sumz) || !(M < INFINITY) || !(M > -INFINITY) || !(st.S > 0);
    double loss = NAN, ce = NAN, reg = NAN;
    if (!bad) {
        const double meanz = st.sumz / (double)K;
        const double target_z = hard ? (double)zy : st.sumtz;
        ce = (double)M + log(st.S) - target_z;
        reg = kind == K_MAXSUP ? (double)M - meanz : kind == K_LS ? target_z - meanz : 0.0;
        loss = ce + (double)a->alpha * reg;
    }
    if (a->row_loss) a->row_loss[r] = (float)loss;
    sums[0] += loss;
    sums[1] += ce;
    sums[2] += reg;
    if (want_split) {
        sums[3] += st.spos / (double)K;
        sums[4] += st.sneg / (double)K;
    }
    /* misclassified: the label is not the first index of the max (a tie to an earlier index counts); the first
     * index is looked for only when the label's logit is the max, in the one block where the max was reached and
     * no further than the label */
    int64_t amax = -1;
    if (hard) {
        double miss = NAN;
        if (!bad && zy < M) miss = 1;
        else if (!bad) {
            amax = row_argmax(z, bm, K, M, y + 1, DT);
            miss = amax != y;
        }
        sums[5] += miss;
    }
    if (!g) return;
    if (bad) {
        fill_nan(g, K, DT);
        return;
    }
    const float c0 = kind == K_CE ? 0.f : a->alpha * (1.0f / (float)K);
    const float c1 = kind == K_LS ? 1.f - a->alpha : 1.f;
    if (kind == K_MAXSUP && amax < 0) amax = row_argmax(z, bm, K, M, K, DT);
    const double invS = 1.0 / st.S;
    write_grad(g, t, scratch, bm, K, M, invS, scale, c0, c1, stream, DT, SD);
    fix_special_entries(a, g, t, scratch, bm, y, amax, M, invS, scale, c0, c1, DT, SD);
}

ALWAYS_INLINE void run_rows(hfm_job *job, const int DT, const int SD) {
    const hfm_args *a = job->a;
    const int64_t K = a->K;
    const int64_t nb = (K + HFM_BS - 1) / HFM_BS;
    const size_t esz = DT == DT_F32 ? 4 : 2;
    float *scratch = (float *)aligned_alloc(64, (size_t)(((K + VL + 15) / 16) * 16) * sizeof(float));
    float *bm = (float *)malloc((size_t)nb * sizeof(float));
    if (!scratch || !bm) { /* out of memory */
        free(scratch);
        free(bm);
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (;;) {
        const int64_t c = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (c >= job->n_chunks) break;
        const int64_t r0 = c * job->chunk_rows;
        const int64_t r1 = r0 + job->chunk_rows < job->N ? r0 + job->chunk_rows : job->N;
        double *sums = job->sums + HFM_NSUMS * c;
        for (int64_t r = r0; r < r1; r++) {
            const int64_t o = r / a->n_inner, i = r % a->n_inner;
            const char *z = (const char *)a->logits + (size_t)(o * a->ls_outer + i * a->ls_inner) * esz;
            char *g = a->grad ? (char *)a->grad + (size_t)(o * a->gs_outer + i * a->gs_inner) * esz : NULL;
            int64_t y = -1;
            if (SD < 0) {
                y = a->labels[r];
                if (y == a->ignore_index) {
                    if (a->row_loss) a->row_loss[r] = 0.f;
                    if (g) memset(g, 0, (size_t)K * esz);
                    continue;
                }
            }
            row_kernel(a, z, g, r, y, job->gscale, scratch, bm, sums, job->stream, DT, SD);
        }
    }
    free(scratch);
    free(bm);
}

#define DISPATCH_SD(DT)                                                   \
    do {                                                                  \
        if (!a->soft) run_rows(job, DT, -1);                              \
        else if (a->soft_dtype == DT_F32) run_rows(job, DT, DT_F32);      \
        else if (a->soft_dtype == DT_BF16) run_rows(job, DT, DT_BF16);    \
        else run_rows(job, DT, DT_F16);                                   \
    } while (0)

static void *worker(void *p) {
    hfm_job *job = (hfm_job *)p;
    const hfm_args *a = job->a;
    if (a->dtype == DT_F32) DISPATCH_SD(DT_F32);
    else if (a->dtype == DT_BF16) DISPATCH_SD(DT_BF16);
#ifndef HFM_NO_F16
    else DISPATCH_SD(DT_F16);
#endif
    return NULL;
}

/* Non-temporal stores for the gradient pay off when it goes to a separate buffer that is already resident
 * (no read-for-ownership of lines about to be overwritten), but cost a lot when the buffer is fresh: the
 * page-fault handler has just zeroed the page through the cache.  Ask the kernel (mincore) whether the
 * first and last pages of the gradient are resident; never in place, never for small outputs. */
static int use_streaming_stores(const hfm_args *a, int64_t N) {
    if (getenv("HF_MAXSUP_STREAM")) return atoi(getenv("HF_MAXSUP_STREAM")) != 0;
#if defined(__linux__) && defined(__AVX512F__)
    if (!a->grad || a->grad == a->logits) return 0;
    const size_t esz = a->dtype == DT_F32 ? 4 : 2;
#if !defined(__AVX512BF16__)
    if (esz != 4) return 0;
#else
    if (a->dtype == DT_F16) return 0;
#endif
    const size_t bytes = (size_t)N * (size_t)a->K * esz;
    if (bytes < ((size_t)32 << 20)) return 0; /* fits in the last-level cache: keep it there */
    const long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0) return 0;
    unsigned char v0 = 0, v1 = 0;
    uintptr_t first = (uintptr_t)a->grad & ~(uintptr_t)(pg - 1);
    uintptr_t last = ((uintptr_t)a->grad + bytes - 1) & ~(uintptr_t)(pg - 1);
    if (mincore((void *)first, (size_t)pg, &v0) != 0 || mincore((void *)last, (size_t)pg, &v1) != 0) return 0;
    return (v0 & 1) && (v1 & 1);
#else
    (void)a; (void)N;
    return 0;
#endif
}

/* returns 0 on success, 2 when a kept label is outside [0, K) (nothing written then), 3 out of memory */
int hfm_run(hfm_args *a) {
    const int64_t N = a->n_outer * a->n_inner;
    if (a->labels) {
        for (int64_t r = 0; r < N; r++) {
            const int64_t y = a->labels[r];
            if (y != a->ignore_index && (y < 0 || y >= a->K)) return 2; /* checked before anything is written */
        }
    }
    for (int q = 0; q < 8; q++) a->out[q] = 0;
    if (N == 0) return 0;

    int nt = a->nthreads < 1 ? 1 : a->nthreads;
    if (nt > 64) nt = 64;
    if (nt > N) nt = (int)N;
    hfm_job job;
    job.a = a;
    job.N = N;
    job.chunk_rows = (int64_t)65536 / (a->K > 0 ? a->K : 1); /* ~64k logits per chunk, whatever nt is */
    if (job.chunk_rows < 1) job.chunk_rows = 1;
    job.n_chunks = (N + job.chunk_rows - 1) / job.chunk_rows;
    job.next = 0;
    job.gscale = a->gscale;
    job.stream = use_streaming_stores(a, N);
    job.failed = 0;
    job.sums = (double *)calloc((size_t)job.n_chunks * HFM_NSUMS, sizeof(double));
    if (!job.sums) return 3;
    pthread_t th[64];
    int started[64] = {0};
    for (int q = 1; q < nt; q++) started[q] = pthread_create(&th[q], NULL, worker, &job) == 0;
    worker(&job); /* the calling thread works too; it alone suffices if no thread could start */
    for (int q = 1; q < nt; q++)
        if (started[q]) pthread_join(th[q], NULL);
    if (job.next < job.n_chunks) { /* some rows not done: no thread could allocate its row buffers */
        free(job.sums);
        return 3;
    }
    for (int64_t c = 0; c < job.n_chunks; c++)
        for (int q = 0; q < HFM_NSUMS; q++) a->out[q] += job.sums[HFM_NSUMS * c + q];
    free(job.sums);
    return 0;
}
