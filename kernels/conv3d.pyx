# vol2col + sgemm 3-D convolution for any kernel size, stride, padding, dilation and groups.
#
# The full column matrix of one image and group has Cg*kd*kh*kw rows, but its kd blocks of
# Cg*kh*kw rows are the 2-D im2col matrices of input depth slices: depth tap a of output slice
# od reads input slice iz = od*sd - pf + a*dd. So, with W_ga the weights of group g at depth
# tap a, each output slice is kd accumulating GEMMs
#     out[n, g*Kg:(g+1)*Kg, od, rows] (+)= W_ga[Kg, Cg*kh*kw] @ cols(iz)[Cg*kh*kw, rows*OW]
# and the 2-D columns of an input slice, built once, serve every output slice that reads it
# (kd of them at depth stride 1): a third of the column traffic of the full matrix for a 3x3x3
# kernel. Taps that fall in the depth padding are skipped rather than multiplied by zeros.
#
# Work items are (image, group, run of output slices, run of output rows). Each keeps the
# columns of the last (kd - 1)*dd + 1 input slices it built in a per-thread ring; a depth tap
# window never spans more, so the slices one output slice needs never evict one another. Item
# sizes depend on the shapes only and every output element is summed by the same GEMMs in the
# same tap order, so results are bit-identical for any thread count.
from cython.parallel cimport prange, threadid
from libc.stdlib cimport malloc, free
from libc.string cimport memset, memcpy

from _blas cimport sgemm_rm
from _epilogue cimport bias_act_row
from _im2col cimport im2col_rows


def f32_conv3d_vol2col(const float[:, :, :, :, ::1] x, const float[:, ::1] w_taps, bias,
                       float[:, :, :, :, ::1] out,
                       int kd, int kh, int kw, int sd, int sh, int sw,
                       int pf, int pt, int pl, int dd, int dh, int dw,
                       int groups, int slices_per_item, int rows_per_item, int act,
                       int num_threads):
    """out = conv3d(x, w) for w_taps[K, kd*Cg*kh*kw], the weight (K, Cg, kd, kh, kw) with its
    depth axis moved first, (K, kd, Cg, kh, kw); shapes are checked by the caller."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t D = x.shape[2], H = x.shape[3], W = x.shape[4]
    cdef Py_ssize_t K = out.shape[1], OD = out.shape[2], OH = out.shape[3], OW = out.shape[4]
    cdef Py_ssize_t Cg = C // groups, Kg = K // groups, kdim2 = Cg * kh * kw
    cdef Py_ssize_t opix = OD * OH * OW
    cdef Py_ssize_t ring = (kd - 1) * dd + 1
    cdef Py_ssize_t nd = (OD + slices_per_item - 1) // slices_per_item
    cdef Py_ssize_t nr = (OH + rows_per_item - 1) // rows_per_item
    cdef Py_ssize_t items = N * groups * nd * nr
    cdef Py_ssize_t slot_floats = kdim2 * rows_per_item * OW
    cdef const float[::1] b
    cdef const float* bptr = NULL
    if bias is not None:
        b = bias
        bptr = &b[0]
    if num_threads > items:
        num_threads = <int>max(1, items)
    cdef float* buf = <float*>malloc(num_threads * ring * slot_floats * sizeof(float))
    cdef Py_ssize_t* tags = <Py_ssize_t*>malloc(num_threads * ring * sizeof(Py_ssize_t))
    if buf == NULL or tags == NULL:
        free(buf)
        free(tags)
        raise MemoryError("vol2col column buffer")
    cdef Py_ssize_t it, n, g, rest, od0, od1, oy0, oy1, ncols, od, a, iz, i, k, slot, taps
    cdef float* cols
    cdef float* dst
    cdef Py_ssize_t* tag
    try:
        for it in prange(items, nogil=True, num_threads=num_threads, schedule="static"):
            n = it // (groups * nd * nr)
            rest = it % (groups * nd * nr)
            g = rest // (nd * nr)
            rest = rest % (nd * nr)
            od0 = (rest // nr) * slices_per_item
            od1 = min(od0 + slices_per_item, OD)
            oy0 = (rest % nr) * rows_per_item
            oy1 = min(oy0 + rows_per_item, OH)
            ncols = (oy1 - oy0) * OW
            tag = tags + threadid() * ring
            for i in range(ring):
                tag[i] = -1
            for od in range(od0, od1):
                dst = &out[n, g * Kg, od, oy0, 0]
                taps = 0
                for a in range(kd):
                    iz = od * sd - pf + a * dd
                    if iz < 0 or iz >= D:
                        continue
                    slot = iz % ring
                    cols = buf + (threadid() * ring + slot) * slot_floats
                    if tag[slot] != iz:
                        im2col_rows(&x[n, g * Cg, iz, 0, 0], D * H * W, Cg, H, W, kh, kw,
                                    sh, sw, pt, pl, dh, dw, oy0, oy1, 0, OW, cols)
                        tag[slot] = iz
                    sgemm_rm(False, False, Kg, ncols, kdim2, 1.0,
                             &w_taps[g * Kg, a * kdim2], kd * kdim2, cols, ncols,
                             1.0 if taps > 0 else 0.0, dst, opix)
                    taps = taps + 1
                for k in range(Kg):
                    if taps == 0:   # the whole slice lies in the depth padding
                        memset(dst + k * opix, 0, ncols * sizeof(float))
                    bias_act_row(dst + k * opix, ncols,
                                 bptr[g * Kg + k] if bptr != NULL else 0, act)
    finally:
        free(buf)
        free(tags)
