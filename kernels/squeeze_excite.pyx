# Squeeze-and-excitation (engine/graph/ops/se.py): the per-channel gates computed from pooled
# channels, gate(W2 act(W1 p + b1) + b2), and the whole block on NCHW in one call (plane means,
# gates, scaling). The blocked form pools and scales with kernels/nchwc.pyx's
# f32_global_avg_blocked and f32_scale_blocked around f32_se_gates.
#
# Every kernel checks the shapes it is given against one another before it releases the GIL.
# The means and scalings are split between the threads of the engine's pool (kernels/_pool.h)
# by planes, each computed whole by one thread in a fixed order, so results do not depend on
# the thread count.
from _epilogue cimport ce_act_t, check_act
from libc.stdlib cimport free, malloc

cimport numpy as cnp
from _arrays cimport f32_arg, f32_array
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()
cnp.import_array()     # the NumPy C API f32_arg calls

import numpy as np

cdef extern from "_vec_act.h":
    pass


cdef extern from *:
    """
    /* A squeeze-excite's gates, h = act(W1 p + b1) (R values) then g = gate(W2 h + b2) (C
     * values), in two passes over ranges of their outputs, so that threads can share each:
     * w1t: [C][R], w2t: [R][C] (each product runs over rows of the transposed weights, the
     * inner loop a vector over the range's outputs, the sums over the rows in order). The
     * weights come from memory in a model (1.8 MB for MobileNetV3's 960 -> 240 -> 960): each
     * pass prefetches its range of the row CE_SE_AHEAD rows on, which at one thread took
     * 960 -> 240 -> 960 from 166 to 118 us and 672 -> 168 -> 672 from 81 to 54, weights cold
     * (bench/bench_dispatch.py gemm/se_gates_cold); at two threads alike with and without. */
    #define CE_SE_AHEAD 4
    /* the cache lines of floats [lo, hi) of a row, for reading soon */
    static inline void ce_se_prefetch(const float *row, int lo, int hi)
    {
        for (int i = lo; i < hi; i += 16)
            __builtin_prefetch(row + i, 0, 0);
    }

    /* h[r0:r1] = act(W1 p + b1) over those rows of W1 for ``N`` images (p and h N rows of C and
     * R). */
    static void ce_se_hidden(const float *restrict p, int N, int C, int R,
                             const float *restrict w1t, const float *restrict b1, ce_act_t act,
                             float *restrict h, int r0, int r1)
    {
        for (int n = 0; n < N; n++) {
            float *hn = h + (ptrdiff_t)n * R;
            const float *pn = p + (ptrdiff_t)n * C;
            for (int r = r0; r < r1; r++)
                hn[r] = 0.0f;
            for (int c = 0; c < C; c++) {
                const float v = pn[c], *w = w1t + (ptrdiff_t)c * R;
                if (c + CE_SE_AHEAD < C)
                    ce_se_prefetch(w + CE_SE_AHEAD * (ptrdiff_t)R, r0, r1);
                for (int r = r0; r < r1; r++)
                    hn[r] += w[r] * v;
            }
            for (int r = r0; r < r1; r++)
                hn[r] += b1[r];
            ce_act_row(hn + r0, r1 - r0, 0.0f, act);
        }
    }

    /* out[c0:c1] = gate(W2 h + b2) for ``N`` images (out rows Cpad apart; the columns from C
     * on, in the last range, set to 0); gate 0 is the sigmoid, 1 max(0, min(1, alpha v +
     * beta)). c0 is a multiple of the vector width: the vectors fall where they do in one
     * range. */
    static void ce_se_outer(const float *restrict h, int N, int C, int R,
                            const float *restrict w2t, const float *restrict b2, int gate,
                            float alpha, float beta, float *restrict out, int Cpad, int c0,
                            int c1)
    {
        for (int n = 0; n < N; n++) {
            float *on = out + (ptrdiff_t)n * Cpad;
            const float *hn = h + (ptrdiff_t)n * R;
            for (int c = c0; c < c1; c++)
                on[c] = b2[c];
            if (c1 == C)
                for (int c = C; c < Cpad; c++)
                    on[c] = 0.0f;
            for (int r = 0; r < R; r++) {
                const float v = hn[r], *w = w2t + (ptrdiff_t)r * C;
                if (r + CE_SE_AHEAD < R)
                    ce_se_prefetch(w + CE_SE_AHEAD * (ptrdiff_t)C, c0, c1);
                for (int c = c0; c < c1; c++)
                    on[c] += w[c] * v;
            }
            int c = c0;
            if (gate == 0) {
                for (; c + CE_ACT_VW <= c1; c += CE_ACT_VW)
                    *(ce_act_vfu *)(on + c) = ce_act_vec_m_sigmoid(*(const ce_act_vfu *)(on + c));
                for (; c < c1; c++) {
                    ce_act_vf v = {on[c]};
                    on[c] = ce_act_vec_m_sigmoid(v)[0];
                }
            } else {
                for (; c < c1; c++) {
                    float v = on[c] * alpha + beta;
                    on[c] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
                }
            }
        }
    }
    """
    void ce_se_hidden(const float *p, int N, int C, int R, const float *w1t, const float *b1,
                      ce_act_t act, float *h, int r0, int r1) nogil
    void ce_se_outer(const float *h, int N, int C, int R, const float *w2t, const float *b2,
                     int gate, float alpha, float beta, float *out, int Cpad, int c0,
                     int c1) nogil


# Outputs of either pass a unit of the threads' work takes: four vectors of 16, a range of the
# weights' rows 256 bytes wide.
cdef enum:
    GATE_UNIT = 64



def f32_se_gates(pooled, w1t, b1, w2t, b2, ce_act_t act, int gate, float alpha, float beta,
                 out, int num_threads=1):
    """out[n, :C] = gate(W2 act(W1 pooled[n] + b1) + b2), out[n, C:] = 0: a squeeze-excite's
    per-channel factors from its pooled channels (w1t = W1.T, (C, R); w2t = W2.T, (R, C));
    act: an activation (engine/ops/activation.py kernel_act); gate 0: sigmoid, 1: hard sigmoid
    max(0, min(1, alpha v + beta)). The threads share ranges of GATE_UNIT outputs of each
    product (each output's sum in one order whatever their number): the weights come from
    memory, and two cores read them faster than one."""
    se_gates(pooled, w1t, b1, w2t, b2, act, gate, alpha, beta, out, num_threads)


ctypedef struct GateJob:
    const float* p
    int N, C, R
    const float* w1t
    const float* b1
    const float* w2t
    const float* b2
    ce_act_t act
    int gate
    float alpha, beta
    float* h
    float* out
    int Cpad


cdef void _hidden_units(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef GateJob* j = <GateJob*>job
    ce_se_hidden(j.p, j.N, j.C, j.R, j.w1t, j.b1, j.act, j.h, <int>(lo * GATE_UNIT),
                 <int>min(hi * GATE_UNIT, j.R))


cdef void _outer_units(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef GateJob* j = <GateJob*>job
    ce_se_outer(j.h, j.N, j.C, j.R, j.w2t, j.b2, j.gate, j.alpha, j.beta, j.out, j.Cpad,
                <int>(lo * GATE_UNIT), <int>min(hi * GATE_UNIT, j.C))


cdef int se_gates(pooled, w1t, b1, w2t, b2, ce_act_t act, int gate, float alpha, float beta,
                  out, int num_threads) except -1:
    """f32_se_gates on float32 arrays (pooled, w1t, w2t, out 2-D; b1, b2 1-D)."""
    check_act(act)
    cdef f32_array pv = f32_arg(pooled, 2, "pooled", False), ov = f32_arg(out, 2, "out", True)
    cdef f32_array w1 = f32_arg(w1t, 2, "w1t", False), w2 = f32_arg(w2t, 2, "w2t", False)
    cdef f32_array c1 = f32_arg(b1, 1, "b1", False), c2 = f32_arg(b2, 1, "b2", False)
    cdef Py_ssize_t N = pv.shape[0], C = pv.shape[1], R = w1.shape[1]
    if (w1.shape[0] != C or c1.shape[0] != R or w2.shape[0] != R or w2.shape[1] != C
            or c2.shape[0] != C or ov.shape[0] != N or ov.shape[1] < C or R < 1
            or gate not in (0, 1)):
        raise ValueError(f"pooled {pooled.shape}, W1.T {w1t.shape}, W2.T {w2t.shape} and out "
                         f"{out.shape} do not fit, or gate {gate} unknown")
    if C > 1 << 30 or R > 1 << 30 or ov.shape[1] > 1 << 30 or N > 1 << 30:
        raise ValueError(f"{C} channels, {R} hidden and {N} images: too many for the kernel's "
                         f"int arithmetic")
    if C == 0 or N == 0:
        return 0
    # the hidden activations, N x R floats, freed on return
    cdef float* h = <float*>malloc(N * R * sizeof(float))
    if h == NULL:
        raise MemoryError("no memory for the squeeze-excite's hidden values")
    cdef GateJob j = GateJob(pv.p, <int>N, <int>C, <int>R, w1.p, c1.p, w2.p, c2.p, act, gate,
                             alpha, beta, h, ov.p, <int>ov.shape[1])
    cdef int nt = max(1, num_threads)
    try:
        with nogil:
            ce_pool_for(nt, (R + GATE_UNIT - 1) // GATE_UNIT, _hidden_units, &j)
            ce_pool_for(nt, (C + GATE_UNIT - 1) // GATE_UNIT, _outer_units, &j)
    finally:
        free(h)
    return 0


cdef extern from *:
    """
    /* A squeeze-excite on NCHW, the plane of one channel at a time: its sum (vector partial
     * sums, in an order fixed by the plane's size) and its scaling. */
    static float ce_se_plane_sum(const float *x, Py_ssize_t P)
    {
        ce_act_vf s0 = {0}, s1 = {0};
        Py_ssize_t p = 0;
        for (; p + 2 * CE_ACT_VW <= P; p += 2 * CE_ACT_VW) {
            s0 += *(const ce_act_vfu *)(x + p);
            s1 += *(const ce_act_vfu *)(x + p + CE_ACT_VW);
        }
        if (p + CE_ACT_VW <= P) {
            s0 += *(const ce_act_vfu *)(x + p);
            p += CE_ACT_VW;
        }
        s0 += s1;
        /* the lanes pairwise, then the tail: a short dependency chain per plane */
        float lanes[CE_ACT_VW], tail = 0.0f;
        __builtin_memcpy(lanes, &s0, sizeof s0);
        for (int w = CE_ACT_VW / 2; w > 0; w /= 2)
            for (int j = 0; j < w; j++)
                lanes[j] += lanes[j + w];
        for (; p < P; p++)
            tail += x[p];
        return lanes[0] + tail;
    }

    static void ce_se_plane_scale(const float *x, Py_ssize_t P, float g, float *out)
    {
        Py_ssize_t p = 0;
        for (; p + CE_ACT_VW <= P; p += CE_ACT_VW)
            *(ce_act_vfu *)(out + p) = *(const ce_act_vfu *)(x + p) * g;
        for (; p < P; p++)
            out[p] = x[p] * g;
    }
    """
    float ce_se_plane_sum(const float *x, Py_ssize_t P) nogil
    void ce_se_plane_scale(const float *x, Py_ssize_t P, float g, float *out) nogil


def f32_se_nchw(const float[:, :, ::1] x, w1t, b1, w2t, b2, ce_act_t act, int gate,
                float alpha, float beta, float[:, :, ::1] out, int num_threads=1,
                int gate_threads=-1):
    """A squeeze-excite on x (N, C, H*W) in one call: out[n, c] = x[n, c] * g[n, c], the gates
    of f32_se_gates from the planes' means (out may be x: each plane is read before it is
    written). num_threads take ranges of planes for the means and the scaling, gate_threads
    (num_threads if negative) ranges of the gates' products."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"out {tuple(out.shape)[:3]} does not fit x {tuple(x.shape)[:3]}")
    pooled = np.empty((N, C), np.float32)
    gates = np.empty((N, C), np.float32)
    cdef float[:, ::1] pv = pooled
    cdef float[:, ::1] gv = gates
    if N == 0 or C == 0:
        return
    cdef const float* xp = &x[0, 0, 0]
    cdef float* op = &out[0, 0, 0]
    cdef float* pp = &pv[0, 0]
    cdef float* gp = &gv[0, 0]
    cdef SeJob j = SeJob(xp, P, 1.0 / P if P else 0.0, pp, gp, op)
    with nogil:
        ce_pool_for(num_threads, N * C, _plane_means, &j)
    se_gates(pooled, w1t, b1, w2t, b2, act, gate, alpha, beta, gates,
             num_threads if gate_threads < 0 else gate_threads)
    if P == 0:
        return
    with nogil:
        ce_pool_for(num_threads, N * C, _plane_scales, &j)


ctypedef struct SeJob:
    const float* x
    Py_ssize_t P
    float inv
    float* means
    const float* gates
    float* out


cdef void _plane_means(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef SeJob* j = <SeJob*>job
    cdef Py_ssize_t it
    for it in range(lo, hi):
        j.means[it] = ce_se_plane_sum(j.x + it * j.P, j.P) * j.inv


cdef void _plane_scales(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef SeJob* j = <SeJob*>job
    cdef Py_ssize_t it
    for it in range(lo, hi):
        ce_se_plane_scale(j.x + it * j.P, j.P, j.gates[it], j.out + it * j.P)
