/* exp on a GCC vector of floats, for the activation kernels (kernels/activation.pyx).
 *
 * e^x = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2, ln 2 in two parts so that r is
 * exact (Cody and Waite); |r| <= ln2/2, where the Taylor polynomial of degree 7 is within
 * 7e-9 relative of e^r. 2^n is built in the exponent field as two factors, applied one after
 * the other, so that results down to the denormals (n to -150) and up to FLT_MAX (n = 128
 * with r < 0) come out right; x is clamped to [-104, 88.8] first (below: 0 after rounding;
 * above: inf). A NaN comes back as it went in. Measured against float64 in
 * tests/test_activation_kernels.py: within 2 ulp of the rounded result on normal outputs.
 */
#ifndef CE_VEXP_H
#define CE_VEXP_H

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

/* where mask (all ones) is set, b; elsewhere a */
static inline ce_act_vf ce_act_select(ce_act_vi mask, ce_act_vf a, ce_act_vf b)
{
    return (ce_act_vf)(((ce_act_vi)a & ~mask) | ((ce_act_vi)b & mask));
}

static inline ce_act_vf ce_act_exp(ce_act_vf x)
{
    const ce_act_vf zero = {0};
    ce_act_vf c = ce_act_select(x > zero + 88.8f, x, zero + 88.8f);
    c = ce_act_select(c < zero - 104.0f, c, zero - 104.0f);
    /* n = round(c / ln 2): adding 1.5 * 2^23 rounds to an integer in the low mantissa bits */
    const ce_act_vf magic = zero + 12582912.0f;
    ce_act_vf t = c * 1.44269504088896341f + magic;
    ce_act_vi n = (ce_act_vi)t - (ce_act_vi)magic;
    ce_act_vf nf = t - magic;
    ce_act_vf r = c - nf * 0.693145751953125f;          /* ln 2, high part: exact product */
    r = r - nf * 1.428606765330187045e-06f;             /* ln 2, low part */
    ce_act_vf p = zero + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    ce_act_vi n1 = n >> 1;
    ce_act_vi n2 = n - n1;
    p = p * (ce_act_vf)((n1 + 127) << 23);
    p = p * (ce_act_vf)((n2 + 127) << 23);
    return ce_act_select((ce_act_vi)(x != x), p, x);
}

#endif
