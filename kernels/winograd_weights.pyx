# The Winograd weight transform U = G w G^T (engine/ops/winograd.py pack_weights), computed in
# float64 and rounded once, written straight into the packed layout of the micro-kernel
# (kernels/_packed_gemm.h) that kernels/conv_winograd.pyx runs its element-wise GEMMs on.
from cython.parallel cimport prange
from libc.string cimport memcpy


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
    for blk in prange(groups * nmb, nogil=True, num_threads=num_threads, schedule="static"):
        g = blk // nmb
        kb = blk - g * nmb
        pack_winograd_block(&w[g * kg + kb * mr, 0, 0, 0], cg * 9, min(mr, kg - kb * mr), cg,
                            gm, a, mr, &out[(g * E * nmb + kb) * cg * mr], es)
