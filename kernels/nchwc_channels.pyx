# Per-channel kernels on channel-blocked activations (NCHWc, _nchwc.h): each channel's mean over
# its plane (the global average pool, a squeeze-excite's squeeze), each channel scaled by a
# factor of its own (the excite), and an inference BatchNormalization with the activation after
# it. One vector of a block's channels per pixel. The threads of the engine's pool
# (kernels/_pool.h) take ranges of blocks; every output is computed whole by one thread, so
# results do not depend on the thread count.
from _epilogue cimport ce_act_t, check_act
cimport numpy as cnp
from _arrays cimport f32_arg, f32_array
from _pool cimport ce_pool_attach, ce_pool_for

ce_pool_attach()
cnp.import_array()     # the NumPy C API f32_arg calls


cdef extern from "_nchwc.h":
    int CE_NC_B
    void ce_nc_block_mean(const float *src, Py_ssize_t P, float *mean, int nc) nogil


ctypedef struct MeanJob:
    const float* x
    Py_ssize_t C, P
    float* out


cdef void _mean_items(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Blocks [lo, hi) of all images."""
    cdef MeanJob* j = <MeanJob*>job
    cdef Py_ssize_t Cb = (j.C + CE_NC_B - 1) // CE_NC_B, it, cb
    for it in range(lo, hi):
        cb = it % Cb
        ce_nc_block_mean(j.x + it * j.P * CE_NC_B, j.P, j.out + (it // Cb) * j.C + cb * CE_NC_B,
                         <int>min(CE_NC_B, j.C - cb * CE_NC_B))


def f32_global_avg_blocked(x, out, int num_threads=1):
    """out[n, c] = mean over the pixels of channel c, for the C channels of out; the threads
    take ranges of blocks."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array outv = f32_arg(out, 2, "out", True)
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], P = xv.shape[2] * xv.shape[3]
    cdef Py_ssize_t C = outv.shape[1]
    if outv.shape[0] != N or (C + CE_NC_B - 1) // CE_NC_B != Cb or xv.shape[4] != CE_NC_B:
        raise ValueError(f"out {out.shape[:2]} does not fit x {x.shape}")
    if P == 0:
        raise ValueError("x must have a non-empty plane")
    if N == 0 or Cb == 0:
        return
    cdef MeanJob j = MeanJob(xv.p, C, P, outv.p)
    with nogil:
        ce_pool_for(num_threads, N * Cb, _mean_items, &j)


cdef extern from *:
    """
    /* out[p][:] = x[p][:] * s for the P pixels of one block: a squeeze-excite's gate */
    static void ce_nc_block_scale(const float *x, Py_ssize_t P, const float *s, float *out)
    {
        ce_nc_vf v = CE_NC_LD(s);
        for (Py_ssize_t p = 0; p < P; p++)
            CE_NC_ST(out + p * CE_NC_B, CE_NC_LD(x + p * CE_NC_B) * v);
    }

    """
    void ce_nc_block_scale(const float *x, Py_ssize_t P, const float *s, float *out) nogil


ctypedef struct ScaleJob:
    const float* x
    Py_ssize_t P
    const float* s
    float* out


cdef void _scale_blocks(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Blocks [lo, hi) of all images, each P pixels, its factors at s + it * B."""
    cdef ScaleJob* j = <ScaleJob*>job
    cdef Py_ssize_t it
    for it in range(lo, hi):
        ce_nc_block_scale(j.x + it * j.P * CE_NC_B, j.P, j.s + it * CE_NC_B,
                          j.out + it * j.P * CE_NC_B)


def f32_scale_blocked(x, s, out, int num_threads=1):
    """out[n, cb, :, :, j] = x[n, cb, :, :, j] * s[n, cb * B + j]: every channel of x scaled
    by its own factor (s holds Cb * B of them; out may be x); the threads take ranges of
    blocks."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array sv = f32_arg(s, 2, "s", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], P = xv.shape[2] * xv.shape[3]
    if (out.shape != x.shape or xv.shape[4] != CE_NC_B or sv.shape[0] != N
            or sv.shape[1] != Cb * CE_NC_B):
        raise ValueError(f"x {x.shape}, s {s.shape[:2]} and out "
                         f"{out.shape} do not fit")
    if N == 0 or Cb == 0 or P == 0:
        return
    cdef ScaleJob j = ScaleJob(xv.p, P, sv.p, outv.p)
    with nogil:
        ce_pool_for(num_threads, N * Cb, _scale_blocks, &j)


cdef extern from *:
    """
    /* out[p][:] = act(x[p][:] * s + t) for the P pixels of one block: an inference
     * BatchNormalization (and the activation fused after it) on blocks */
    static void ce_nc_block_affine(const float *x, Py_ssize_t P, const float *s, const float *t,
                                   float *out, ce_act_t act)
    {
        ce_nc_vf vs = CE_NC_LD(s), vt = CE_NC_LD(t);
        for (Py_ssize_t p = 0; p < P; p++)
            CE_NC_ST(out + p * CE_NC_B, ce_nc_act(CE_NC_LD(x + p * CE_NC_B) * vs + vt, act));
    }
    """
    void ce_nc_block_affine(const float *x, Py_ssize_t P, const float *s, const float *t,
                            float *out, ce_act_t act) nogil


ctypedef struct AffineJob:
    const float* x
    Py_ssize_t Cb, P
    const float* scale
    const float* shift
    float* out
    ce_act_t act


cdef void _affine_blocks(void* job, int thread, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Blocks [lo, hi) of all images."""
    cdef AffineJob* j = <AffineJob*>job
    cdef Py_ssize_t it
    for it in range(lo, hi):
        ce_nc_block_affine(j.x + it * j.P * CE_NC_B, j.P, j.scale + (it % j.Cb) * CE_NC_B,
                           j.shift + (it % j.Cb) * CE_NC_B, j.out + it * j.P * CE_NC_B, j.act)


def f32_scale_shift_blocked(x, scale, shift, out, ce_act_t act, int num_threads=1):
    """out[n, cb, :, :, j] = act(x[n, cb, :, :, j] * scale[c] + shift[c]), c = cb * B + j (an
    inference BatchNormalization on blocks; scale and shift hold Cb * B values, zero for the
    padding channels, which every activation keeps at zero; out may be x). The threads take
    ranges of blocks."""
    cdef f32_array xv = f32_arg(x, 5, "x", False)
    cdef f32_array scalev = f32_arg(scale, 1, "scale", False)
    cdef f32_array shiftv = f32_arg(shift, 1, "shift", False)
    cdef f32_array outv = f32_arg(out, 5, "out", True)
    check_act(act)
    cdef Py_ssize_t N = xv.shape[0], Cb = xv.shape[1], P = xv.shape[2] * xv.shape[3]
    if (out.shape != x.shape or xv.shape[4] != CE_NC_B
            or scalev.shape[0] != Cb * CE_NC_B or shiftv.shape[0] != Cb * CE_NC_B):
        raise ValueError(f"x {x.shape}, scale ({scale.shape[0]},), shift "
                         f"({shift.shape[0]},) and out {out.shape} do not fit")
    if N == 0 or Cb == 0 or P == 0:
        return
    cdef AffineJob j = AffineJob(xv.p, Cb, P, scalev.p, shiftv.p,
                                 outv.p, act)
    with nogil:
        ce_pool_for(num_threads, N * Cb, _affine_blocks, &j)
