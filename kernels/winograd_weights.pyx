# The Winograd weight transform U = G w G^T (engine/ops/winograd.py pack_weights), computed in
# float64 and rounded once, written straight into the packed layout of the micro-kernel
# (kernels/_packed_gemm.h) that kernels/conv_winograd.pyx runs its element-wise GEMMs on.
from libc.string cimport memcpy

from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()


ctypedef fused weight_t:
    float
    double

cdef enum:
    PACK_MAX_MR = 32        # rows per packed block the packing takes


cdef void pack_winograd_block(const weight_t* w, Py_ssize_t row_stride, Py_ssize_t rows,
                              Py_ssize_t cg, const double* gm, Py_ssize_t a, Py_ssize_t mr,
                              float* out, Py_ssize_t es) noexcept nogil:
    # One block of `rows` (<= mr) weight rows k, each (cg, 3, 3) at w + r * row_stride: every
    # (e, c) run of mr floats is made in buf first and written whole, since the E runs of one c
    # lie es floats apart (a power of two times 4 bytes, often), on the same cache sets.
    cdef float buf[PACK_MAX_MR * 64]
    cdef Py_ssize_t c, r, i, j, e, E = a * a
    cdef const weight_t* p
    cdef double g0, g1, g2, t0, t1, t2
    for c in range(cg):
        for r in range(mr):
            if r >= rows:
                for e in range(E):
                    buf[e * mr + r] = 0
                continue
            p = w + r * row_stride + c * 9
            for i in range(a):
                # row i of G w, then element e = i * a + j of (G w) G^T
                g0, g1, g2 = gm[3 * i], gm[3 * i + 1], gm[3 * i + 2]
                t0 = g0 * <double>p[0] + g1 * <double>p[3] + g2 * <double>p[6]
                t1 = g0 * <double>p[1] + g1 * <double>p[4] + g2 * <double>p[7]
                t2 = g0 * <double>p[2] + g1 * <double>p[5] + g2 * <double>p[8]
                for j in range(a):
                    buf[(i * a + j) * mr + r] = <float>(t0 * gm[3 * j] + t1 * gm[3 * j + 1]
                                                        + t2 * gm[3 * j + 2])
        for e in range(E):
            memcpy(out + e * es + c * mr, buf + e * mr, mr * sizeof(float))


def f32_pack_winograd_weights(const weight_t[:, :, :, ::1] w, const double[:, ::1] G,
                              int groups, int mr, float[::1] out, int num_threads):
    """out = U[groups, e, Kg, Cg] = (G w[k, c] G^T)[e], computed in float64 and rounded once,
    packed for the micro-kernel as [groups * E][ceil(Kg/mr)][Cg][mr] (rows beyond Kg zero).
    G: (a, 3), E = a * a <= 64. Every value is computed by the same instructions for any
    thread count."""
    cdef Py_ssize_t K = w.shape[0], cg = w.shape[1], a = G.shape[0], E = a * a
    cdef Py_ssize_t kg = K // groups, nmb = (kg + mr - 1) // mr
    cdef Py_ssize_t blk, g, kb, es = nmb * cg * mr
    cdef double gm[8 * 3]       # read-only in the parallel loop: shared safely
    if w.shape[2] != 3 or w.shape[3] != 3 or G.shape[1] != 3 or a > 8 or groups < 1 \
            or K % groups or not 1 <= mr <= PACK_MAX_MR:
        raise ValueError("f32_pack_winograd_weights: bad shapes")
    if out.shape[0] != groups * E * es:
        raise ValueError(f"out must have {groups * E * es} floats, got {out.shape[0]}")
    for blk in range(a * 3):
        gm[blk] = G[blk // 3, blk % 3]
    cdef PackJob j = PackJob(&w[0, 0, 0, 0], w.strides[0] // sizeof(weight_t), cg, kg, nmb, mr,
                             &gm[0], a, E, es, &out[0])
    with nogil:
        if weight_t is float:
            ce_pool_for(num_threads, groups * nmb, _pack_f32, &j)
        else:
            ce_pool_for(num_threads, groups * nmb, _pack_f64, &j)


# The threads of the engine's pool (kernels/_pool.h) take ranges of (group, row block) pairs.
ctypedef struct PackJob:
    const void* w               # float or double rows of cg * 9, `row` elements apart
    Py_ssize_t row, cg, kg, nmb, mr
    const double* gm
    Py_ssize_t a, E, es
    float* out


cdef inline void pack_blocks(const PackJob* j, const weight_t* w, Py_ssize_t lo,
                             Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t blk, g, kb
    for blk in range(lo, hi):
        g = blk // j.nmb
        kb = blk - g * j.nmb
        pack_winograd_block(w + (g * j.kg + kb * j.mr) * j.row, j.row,
                            min(j.mr, j.kg - kb * j.mr), j.cg, j.gm, j.a, j.mr,
                            j.out + (g * j.E * j.nmb + kb) * j.cg * j.mr, j.es)


cdef void _pack_f32(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef PackJob* j = <PackJob*>job
    pack_blocks(j, <const float*>j.w, lo, hi)


cdef void _pack_f64(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef PackJob* j = <PackJob*>job
    pack_blocks(j, <const double*>j.w, lo, hi)
