/* exp, and the activations built on it, on GCC vectors of floats: the activation kernels
 * (kernels/activation.pyx) and the fused output steps of the convolution kernels
 * (kernels/_vec_act.h) compute them with the same formulas.
 *
 * CE_DEFINE_VEC_MATH(p, vf, vi) defines, for the float vector type vf and the int vector vi of
 * the same size: p##_select, p##_reduce (exp's range reduction), p##_exp, p##_expm1,
 * p##_sigmoid, p##_gelu (exact, erf form), p##_gelu_tanh, p##_hardswish, p##_tanh,
 * p##_softplus, p##_mish (and p##_log1p01, log1p on [0, 1]).
 *
 * exp, on AVX-512: e^x = 2^n 2^(j/16) e^r with n + j/16 = round(16 x / ln 2) / 16 and
 * r = x - (n + j/16) ln 2, ln 2 in two parts (Cody and Waite); |r| <= ln2/32, where
 * 1 + r + r^2/2 + r^3/6 is within 1e-8 relative of e^r. 2^(j/16) comes from a 16-entry table
 * held in one register (a permute by the low bits of the rounding's magic sum), and 2^n from
 * scalef, which rounds correctly into the denormals and overflows to inf: 12 instructions,
 * against 16 for the degree-7 polynomial on |r| <= ln2/2 that other targets use (2^n there
 * built in the exponent field as two factors, so that results down to the denormals, n to
 * -150, and up to FLT_MAX come out right). x is clamped to [-104, 88.8] first (below: 0
 * after rounding; above: inf); a NaN passes the clamp and every step as a NaN. Measured
 * against float64 in tests/test_activation_kernels.py: within 2 ulp of the rounded result on
 * normal outputs (1.06 on a sweep of every 61st float).
 *
 * sigmoid: 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below, one division: e = e^-|x| never
 * overflows, and sigmoid(x) keeps its value (down to the denormals) where x sigmoid(x) is
 * still normal.
 *
 * gelu: x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, with erfc(z) for z >= 0 by the Chebyshev
 * fit of Numerical Recipes (erfcc: t e^(-z^2 + P(t)), t = 1 / (1 + z/2), fractional error
 * below 1.2e-7 for every z >= 0), and 1 - erfc(z) / 2 for x > 0: no cancellation on either
 * side. P is taken in u = 1 - t = z t / 2 (its coefficients re-expanded about t = 1), so that
 * near z = 0, where P's terms in t cancel, it is small and exact to its rounding: no second
 * formula there (a Taylor series of erf cost a sixth of the time), and -z^2 enters as
 * -(x / 2) x in one multiply-add. Worst errors on a sweep of [-14, 14]: 4.4 ulp near 0,
 * 17 ulp at x = -4, 124 at x = -11.5 (against 8, 57 and 217 with P in t and z^2 from the
 * rounded z); 4.5 -> 3.8 ns a value on an AVX2 Zen 1 core. P by Estrin's scheme, and the map
 * loops take two vectors at a time (p##_gelu2), whose long chains of dependent steps then
 * overlap: 1.2M values, one thread, 2.5 -> 1.85 ns each (bench/bench_family.py --only gelu).
 *
 * hardswish: x min(max(x/6 + 1/2, 0), 1), through the comparison masks: a NaN stays NaN.
 *
 * expm1: with n and r as for exp, e^x - 1 = 2^n expm1(r) + (2^n - 1), expm1(r) by its Taylor
 * polynomial to r^8 (within 6e-10 relative for |r| <= ln2/2) and 2^n - 1 exact for the n
 * where it matters: within 2 ulp, and exact near 0 where e^x - 1 would cancel.
 *
 * tanh, softplus, mish and gelu_tanh are built on these (formulas at each); the bounds
 * measured for each are in tests/test_activation_kernels.py.
 */
#ifndef CE_VEXP_H
#define CE_VEXP_H

/* The steps of exp that have one instruction on AVX-512 (where every vector type the kernels
 * instantiate these functions for is 16 floats) and a few elsewhere, with the same values:
 * x clamped to [-104, 88.8]; n = round(t) to nearest even, as a float; q 2^n exactly down to
 * the denormals (elsewhere as two factors 2^(n/2) and 2^(n - n/2), so that neither overflows
 * nor leaves the normal range too early). On AVX-512 exp itself is the table form
 * (CE_VEXP_EXP), 12 instructions, which made Sigmoid on 1.2M floats 20% faster
 * (bench/bench_family.py --only sigmoid). */
#if defined(__AVX512F__)
#include <immintrin.h>
/* min and max return their second operand when one is a NaN: x last lets a NaN through */
#define CE_VEXP_CLAMP(p, vf, x, zero)                                                       \
    ((vf)_mm512_max_ps(_mm512_set1_ps(-104.0f),                                             \
                       _mm512_min_ps(_mm512_set1_ps(88.8f), (__m512)(x))))
#define CE_VEXP_ROUND(vf, t, zero)                                                          \
    ((vf)_mm512_roundscale_ps((__m512)(t), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#define CE_VEXP_SCALE(vf, vi, q, nf, zero) ((vf)_mm512_scalef_ps((__m512)(q), (__m512)(nf)))
#define CE_VEXP_TABLE(...) __VA_ARGS__
/* 2^(j/16), j = 0..15, rounded to float */
static const float ce_vexp_exp2_16ths[16] __attribute__((aligned(64))) = {
    1.0f, 1.04427378242741384f, 1.09050773266525766f, 1.13878863475669165f,
    1.18920711500272107f, 1.24185781207348405f, 1.29683955465100967f, 1.35425554693689273f,
    1.41421356237309505f, 1.47682614593949931f, 1.54221082540794082f, 1.61049033194925431f,
    1.68179283050742909f, 1.75625216037329948f, 1.83400808640934246f, 1.91520656139714729f};
/* e^x by the table (see the header); vf is 16 floats wherever AVX-512 is on */
#define CE_VEXP_EXP(p, vf, vi, x, zero)                                                     \
    ({ vf c_ = CE_VEXP_CLAMP(p, vf, x, zero);                                               \
       /* + 1.5 * 2^19 rounds 16 c / ln 2 to an integer k in the low mantissa bits */       \
       vf m_ = c_ * 1.44269504088896341f + 786432.0f;                                       \
       vf k_ = m_ - 786432.0f;                                    /* k / 16 = n + j/16 */   \
       vf r_ = c_ - k_ * 0.693147182464599609375f;                /* ln 2 rounded */        \
       r_ = r_ + k_ * 1.904654323148236017e-09f;                  /* and what it missed */  \
       vf t_ = (vf)_mm512_permutexvar_ps((__m512i)m_, _mm512_load_ps(ce_vexp_exp2_16ths));  \
       vf q_ = (r_ * (1.0f / 6.0f) + 0.5f) * r_ + 1.0f;                                     \
       (vf)_mm512_scalef_ps((__m512)(t_ + (t_ * r_) * q_), (__m512)k_); })   /* floor(k/16) */
#else
#if defined(__AVX2__)
#include <immintrin.h>
/* op (an 8-float intrinsic) on each 8-float part of vectors of 8 or 16 floats */
#define CE_VEXP_M256(vf, op, a, b)                                                          \
    ({ vf a_ = (a), b_ = (b);                                                               \
       __m256 u_[sizeof(vf) / 32], w_[sizeof(vf) / 32];                                     \
       __builtin_memcpy(u_, &a_, sizeof a_);                                                \
       __builtin_memcpy(w_, &b_, sizeof b_);                                                \
       for (int i_ = 0; i_ < (int)(sizeof(vf) / 32); i_++)                                  \
           u_[i_] = op(u_[i_], w_[i_]);                                                     \
       __builtin_memcpy(&a_, u_, sizeof a_);                                                \
       a_; })
/* min and max return their second operand when one is a NaN: x last lets a NaN through
 * (one instruction each, where the comparison and blend of a select are two) */
#define CE_VEXP_CLAMP(p, vf, x, zero)                                                       \
    CE_VEXP_M256(vf, _mm256_max_ps, (zero) - 104.0f,                                        \
                 CE_VEXP_M256(vf, _mm256_min_ps, (zero) + 88.8f, x))
#else
#define CE_VEXP_CLAMP(p, vf, x, zero)                                                       \
    p##_select(p##_select((x) > (zero) + 88.8f, x, (zero) + 88.8f) < (zero) - 104.0f,      \
               p##_select((x) > (zero) + 88.8f, x, (zero) + 88.8f), (zero) - 104.0f)
#endif
/* adding 1.5 * 2^23 rounds to an integer in the low bits */
#define CE_VEXP_ROUND(vf, t, zero) ((((t) + 12582912.0f) - 12582912.0f))
#define CE_VEXP_SCALE(vf, vi, q, nf, zero)                                                  \
    ({ vi n_ = (vi)((nf) + 12582912.0f) - (vi)((zero) + 12582912.0f);                       \
       vi n1_ = n_ >> 1, n2_ = n_ - n1_;                                                    \
       ((q) * (vf)((n1_ + 127) << 23)) * (vf)((n2_ + 127) << 23); })
#if defined(__AVX2__)
/* With AVX2 (8-float vectors, one variable permute) exp is the table form too, with 2^(j/8)
 * from eight entries (the second eight repeat them for 16-float vectors): |r| <= ln2/16, where
 * 1 + r + r^2/2 + r^3/6 + r^4/24 is within 1.3e-9 relative of e^r, and 2^n as two factors as
 * above: 22 instructions against the degree-7 form's 33 and a dependency chain shorter by
 * four multiply-adds. A NaN passes the clamp and the arithmetic. CE_VEXP_EXP_NEG is the same
 * for a <= 0 (sigmoid's e^-|x|): one clamp, and 2^n as 2^(n + 64) 2^-64, which rounds once
 * into the denormals. Sigmoid on 1.2M floats, one thread: 1.09 -> 0.62 ms
 * (bench/bench_family.py --only sigmoid). */
#define CE_VEXP_TABLE(...) __VA_ARGS__
static const float ce_vexp_exp2_8ths[16] __attribute__((aligned(64))) = {
    1.0f, 1.09050773266525766f, 1.18920711500272107f, 1.29683955465100967f,
    1.41421356237309505f, 1.54221082540794082f, 1.68179283050742909f, 1.83400808640934246f,
    1.0f, 1.09050773266525766f, 1.18920711500272107f, 1.29683955465100967f,
    1.41421356237309505f, 1.54221082540794082f, 1.68179283050742909f, 1.83400808640934246f};
/* t 2^(j/8) e^r for c clamped: m_ holds k = 8n + j in its low bits */
#define CE_VEXP_TABLE_STEP(vf, vi, c, m_)                                                   \
    ({ /* + 1.5 * 2^23 rounds 8 c / ln 2 to an integer k in the low mantissa bits */        \
       m_ = (c) * 11.541560327111707f + 12582912.0f;                                        \
       vf k_ = m_ - 12582912.0f, tab_;                                                      \
       vf r_ = (c) - k_ * 0.08664339780807495f;                   /* ln2 / 8 rounded */     \
       r_ = r_ + k_ * 2.380817765157417e-10f;                     /* and what it missed */  \
       __builtin_memcpy(&tab_, ce_vexp_exp2_8ths, sizeof tab_);                             \
       vf t_ = __builtin_shuffle(tab_, (vi)m_ & 7);                                         \
       vf q_ = ((r_ * (1.0f / 24.0f) + (1.0f / 6.0f)) * r_ + 0.5f) * r_ + 1.0f;             \
       t_ + (t_ * r_) * q_; })
#define CE_VEXP_EXP(p, vf, vi, x, zero)                                                     \
    ({ vf m_, e_ = CE_VEXP_TABLE_STEP(vf, vi, CE_VEXP_CLAMP(p, vf, x, zero), m_);           \
       vi n_ = ((vi)m_ - (vi)((zero) + 12582912.0f)) >> 3;        /* floor(k / 8) */        \
       vi n1_ = n_ >> 1, n2_ = n_ - n1_;                                                    \
       (e_ * (vf)((n1_ + 127) << 23)) * (vf)((n2_ + 127) << 23); })
#define CE_VEXP_EXP_NEG(p, vf, vi, a, zero)                                                 \
    ({ vf m_, e_ = CE_VEXP_TABLE_STEP(vf, vi,                                               \
                                      CE_VEXP_M256(vf, _mm256_max_ps, (zero) - 104.0f, a),  \
                                      m_);                                                  \
       vi n_ = ((vi)m_ - (vi)((zero) + 12582912.0f)) >> 3;        /* floor(k / 8) <= 0 */   \
       (e_ * (vf)((n_ + (127 + 64)) << 23)) * 5.421010862427522e-20f; })    /* 2^-64 */
#else
#define CE_VEXP_TABLE(...)
#endif
#endif
#ifndef CE_VEXP_EXP_NEG
#define CE_VEXP_EXP_NEG(p, vf, vi, a, zero) p##_exp(a)
#endif

#define CE_DEFINE_VEC_MATH(p, vf, vi)                                                       \
    /* where mask (all ones) is set, b; elsewhere a */                                      \
    static inline vf p##_select(vi mask, vf a, vf b)                                        \
    {                                                                                       \
        return (vf)(((vi)a & ~mask) | ((vi)b & mask));                                      \
    }                                                                                       \
                                                                                            \
    /* x = n ln 2 + r, |r| <= ln2/2, for x clamped to [-104, 88.8]: returns r, n in *nf */  \
    static inline vf p##_reduce(vf x, vf *nf)                                               \
    {                                                                                       \
        const vf zero = {0};                                                                \
        vf c = CE_VEXP_CLAMP(p, vf, x, zero);                                               \
        (void)zero;                                    /* unused where AVX-512 clamps */    \
        *nf = CE_VEXP_ROUND(vf, c * 1.44269504088896341f, zero);                            \
        vf r = c - *nf * 0.693145751953125f;         /* ln 2, high part: exact product */   \
        return r - *nf * 1.428606765330187045e-06f;  /* ln 2, low part */                   \
    }                                                                                       \
                                                                                            \
    static inline vf p##_exp(vf x)                                                          \
    {                                                                                       \
        const vf zero = {0};                                                                \
        CE_VEXP_TABLE(return CE_VEXP_EXP(p, vf, vi, x, zero);)                              \
        vf nf, r = p##_reduce(x, &nf);                                                      \
        vf q = zero + 1.0f / 5040.0f;                                                       \
        q = q * r + 1.0f / 720.0f;                                                          \
        q = q * r + 1.0f / 120.0f;                                                          \
        q = q * r + 1.0f / 24.0f;                                                           \
        q = q * r + 1.0f / 6.0f;                                                            \
        q = q * r + 0.5f;                                                                   \
        q = q * r + 1.0f;                                                                   \
        q = q * r + 1.0f;                                                                   \
        q = CE_VEXP_SCALE(vf, vi, q, nf, zero);                                             \
        return p##_select((vi)(x != x), q, x);                                              \
    }                                                                                       \
                                                                                            \
    static inline vf p##_sigmoid(vf x)                                                      \
    {                                                                                       \
        const vf zero = {0};                                                                \
        vf e = CE_VEXP_EXP_NEG(p, vf, vi, (vf)((vi)x | (vi)(-zero)), zero);   /* e^-|x| */   \
        return p##_select(x < zero, zero + 1.0f, e) / (1.0f + e);   /* one rounding */      \
    }                                                                                       \
                                                                                            \
    __attribute__((always_inline)) static inline vf p##_gelu(vf x)                          \
    {                                                                                       \
        const vf zero = {0};                                                                \
        /* z = |x| / sqrt 2, at most 1e4: past it the result is x or 0 either way, and       \
         * z t below would be inf x 0 */                                                    \
        vf z = p##_select(x < zero, x, -x) * 0.70710678118654752f;                          \
        z = p##_select(z > zero + 1e4f, z, zero + 1e4f);                                    \
        vf t = 1.0f / (1.0f + 0.5f * z);                                                    \
        /* the fit's degree-9 polynomial in u = 1 - t (z t / 2, exact near 0, where 1 - t   \
         * would lose it), by Estrin's scheme: its terms stay below 2.2 in all, where in t  \
         * they cancel near z = 0 */                                                        \
        vf u = (0.5f * z) * t;                                                              \
        vf u2 = u * u, u4 = u2 * u2, u8 = u4 * u4;                                          \
        vf e12 = u * -0.30267231f - 1.25677255f, e34 = u * 0.25736096f + 0.15292371f;       \
        vf e56 = u * 0.61745735f - 0.2159216f, e78 = u * 0.7157027f - 1.06271775f;          \
        vf q = u * ((e12 + u2 * e34) + u4 * (e56 + u2 * e78) + u8 * -0.17087277f);          \
        /* -z^2 as -(x / 2) x: one rounding, in the multiply-add, where z^2 from the        \
         * rounded z carried twice its error into e^(-z^2), 128 ulp at x = -11 */            \
        vf half_erfc = 0.5f * t * p##_exp(q - (0.5f * x) * x);                              \
        vf phi = p##_select(x > zero, half_erfc, 1.0f - half_erfc);                         \
        return x * phi;                                                                     \
    }                                                                                       \
                                                                                            \
    /* two vectors at once, their long chains of dependent steps interleaved */            \
    static inline void p##_gelu2(vf *a, vf *b)                                              \
    {                                                                                       \
        vf u = p##_gelu(*a), v = p##_gelu(*b);                                              \
        *a = u;                                                                             \
        *b = v;                                                                             \
    }                                                                                       \
                                                                                            \
    static inline vf p##_hardswish(vf x)                                                    \
    {                                                                                       \
        const vf zero = {0};                                                                \
        vf t = x * (1.0f / 6.0f) + 0.5f;                                                    \
        t = p##_select(t < zero, t, zero);                                                  \
        t = p##_select(t > zero + 1.0f, t, zero + 1.0f);                                    \
        return x * t;                                                                       \
    }                                                                       \
                                                                                            \
    /* e^x - 1 as 2^n expm1(r) + (2^n - 1): no cancellation near 0 (see the header) */      \
    static inline vf p##_expm1(vf x)                                                        \
    {                                                                                       \
        const vf zero = {0};                                                                \
        vf nf, r = p##_reduce(x, &nf);                                                      \
        vf q = zero + 1.0f / 40320.0f;                                                      \
        q = q * r + 1.0f / 5040.0f;                                                         \
        q = q * r + 1.0f / 720.0f;                                                          \
        q = q * r + 1.0f / 120.0f;                                                          \
        q = q * r + 1.0f / 24.0f;                                                           \
        q = q * r + 1.0f / 6.0f;                                                            \
        q = q * r + 0.5f;                                                                   \
        vf m = r + (r * r) * q;                                                             \
        vf t = CE_VEXP_SCALE(vf, vi, zero + 1.0f, nf, zero);                                \
        vf e = t * m + (t - 1.0f);                                                          \
        /* from n = 25 on the -1 is below the rounding, and at n = 128 2^n is inf */         \
        e = p##_select(nf > zero + 24.0f, e, CE_VEXP_SCALE(vf, vi, m + 1.0f, nf, zero) - 1.0f); \
        return p##_select((x != x) | (x == zero), e, x);   /* NaN; and -0 stays -0 */       \
    }                                                                                       \
                                                                                            \
    /* log(1 + y) for y in [0, 1]: u = 1 + y rounded, log u = k ln 2 + 2 atanh(s) with      \
     * s = (m - 1) / (m + 1), m = u / 2^k in (0.70, 1.42], and (y - (u - 1)) / u for the     \
     * rounding of u (Goldberg's correction) */                                             \
    static inline vf p##_log1p01(vf y)                                                      \
    {                                                                                       \
        const vf zero = {0};                                                                \
        vf u = 1.0f + y;                                                                    \
        vi big = u > zero + 1.41421356f;                                                    \
        vf m = p##_select(big, u, u * 0.5f);                                                \
        vf s = (m - 1.0f) / (m + 1.0f), s2 = s * s;                                         \
        vf q = zero + 1.0f / 11.0f;                                                         \
        q = q * s2 + 1.0f / 9.0f;                                                           \
        q = q * s2 + 1.0f / 7.0f;                                                           \
        q = q * s2 + 1.0f / 5.0f;                                                           \
        q = q * s2 + 1.0f / 3.0f;                                                           \
        vf lm = 2.0f * s + (2.0f * s) * (s2 * q);                                           \
        vf k = p##_select(big, zero, zero + 0.693147180559945309f);                         \
        return (k + lm) + (y - (u - 1.0f)) / u;                                             \
    }                                                                                       \
                                                                                            \
    /* tanh |x| = -expm1(-2|x|) / (2 + expm1(-2|x|)), then x's sign */                      \
    static inline vf p##_tanh(vf x)                                                         \
    {                                                                                       \
        const vf zero = {0};                                                                \
        const vi sign = (vi)(-zero);                   /* -0.0: the sign bit alone */       \
        vf a = (vf)((vi)x & ~sign);                                                         \
        vf e = p##_expm1(-2.0f * a);                                                        \
        vf t = (vf)((vi)(-e / (2.0f + e)) & ~sign);    /* >= 0, and +0 for a = 0 */         \
        return (vf)((vi)t | ((vi)x & sign));                                                \
    }                                                                                       \
                                                                                            \
    /* log(1 + e^x) = max(x, 0) + log1p(e^-|x|): e^-|x| never overflows */                  \
    static inline vf p##_softplus(vf x)                                                     \
    {                                                                                       \
        const vf zero = {0};                                                                \
        vf l = p##_log1p01(p##_exp(p##_select(x > zero, x, -x)));                           \
        return p##_select(x > zero, l, x + l);                                              \
    }                                                                                       \
                                                                                            \
    /* x tanh(log(1 + e^x)) = x n (n + 2) / (n (n + 2) + 2), n = e^x: no log, no            \
     * cancellation; from x = 20 on the fraction is 1 in float32 (and n^2 would overflow) */ \
    static inline vf p##_mish(vf x)                                                         \
    {                                                                                       \
        const vf zero = {0};                                                                \
        vf n = p##_exp(p##_select(x > zero + 20.0f, x, zero));                              \
        vf a = n * (n + 2.0f);                                                              \
        return p##_select(x > zero + 20.0f, x * (a / (a + 2.0f)), x);                       \
    }                                                                                       \
                                                                                            \
    /* GELU's tanh form: x (1 + tanh z) / 2 = x sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3) */ \
    static inline vf p##_gelu_tanh(vf x)                                                    \
    {                                                                                       \
        vf z = x * (1.5957691216057308f + 0.0713548162726f * (x * x));                      \
        return x * p##_sigmoid(z);                                                          \
    }

/* the widest vector the build targets, for code with no vector type of its own */
#if defined(__AVX512F__)
#define CE_ACT_VW 16
#elif defined(__AVX__)
#define CE_ACT_VW 8
#else
#define CE_ACT_VW 4
#endif
typedef float ce_act_vf __attribute__((vector_size(CE_ACT_VW * 4)));
typedef int ce_act_vi __attribute__((vector_size(CE_ACT_VW * 4)));
typedef float ce_act_vfu __attribute__((vector_size(CE_ACT_VW * 4), aligned(4), may_alias));

CE_DEFINE_VEC_MATH(ce_act, ce_act_vf, ce_act_vi)

#endif
