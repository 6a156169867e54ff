# Per-tile transforms of kernels/conv_winograd.pyx (included there, textually): the 1-D
# transforms of F(2x2,3x3), F(4x4,3x3) and F(6x6,3x3), the input transform of one tile row
# of one channel, and the output transform of one block of tiles of one output channel with
# its scatter into the output (bias, activation). The layouts they read and write are
# described in conv_winograd.pyx's header; STRIP, LANES, MAX_M and the ROW_* columns are
# defined there before the include.

ctypedef (float, float) f2
ctypedef (float, float, float, float) f4
ctypedef (float, float, float, float, float, float) f6
ctypedef (float, float, float, float, float, float, float, float) f8

# ---- 1-D transforms --------------------------------------------------------------------------
# F(2,3) (points 0, 1, -1 and infinity):
#   B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]],   A^T = [[1,1,1,0],[0,1,-1,-1]].
# F(4,3): see the derivation in engine/ops/winograd.py (points 0, 1, -1, 2, -2, infinity).

# Float constants for the transforms below. Written as Python numbers (4 * d) Cython emits
# double literals (4.0 * d), and gcc then computes the transforms in double vectors at half the
# width with conversions on both sides (perf on bench_conv2d.py's conv3x3_c64_56).
cdef extern from *:
    float F0_03125 "0.03125f"
    float F0_0625 "0.0625f"
    float F0_125 "0.125f"
    float F0_25 "0.25f"
    float F0_5 "0.5f"
    float F1_25 "1.25f"
    float F2 "2.0f"
    float F2_5 "2.5f"
    float F4 "4.0f"
    float F4_25 "4.25f"
    float F5 "5.0f"
    float F5_25 "5.25f"
    float F8 "8.0f"
    float F16 "16.0f"
    float F32 "32.0f"


cdef inline f4 bt4(float d0, float d1, float d2, float d3) noexcept nogil:
    return (d0 - d2, d1 + d2, d2 - d1, d1 - d3)


cdef inline f2 at4(float m0, float m1, float m2, float m3) noexcept nogil:
    return (m0 + m1 + m2, m1 - m2 - m3)


cdef inline f6 bt6(float d0, float d1, float d2, float d3, float d4, float d5) noexcept nogil:
    return (F4 * d0 - F5 * d2 + d4,
            (d3 + d4) - F4 * (d1 + d2),
            F4 * (d1 - d2) + (d4 - d3),
            F2 * (d3 - d1) + (d4 - d2),
            F2 * (d1 - d3) + (d4 - d2),
            F4 * d1 - F5 * d3 + d5)


cdef inline f4 at6(float m0, float m1, float m2, float m3, float m4, float m5) noexcept nogil:
    return (m0 + (m1 + m2) + (m3 + m4),
            (m1 - m2) + F2 * (m3 - m4),
            (m1 + m2) + F4 * (m3 + m4),
            (m1 - m2) + F8 * (m3 - m4) + m5)


# F(6,3) (points 0, 1, -1, 2, -2, 1/2, -1/2, infinity; row 0 of toom_cook's B^T and G negated):
#   B^T rows: 1 0 -21/4 0 21/4 0 -1 0 | 0 1 1 -17/4 -17/4 1 1 0 | 0 -1 1 17/4 -17/4 -1 1 0 |
#             0 1/2 1/4 -5/2 -5/4 2 1 0 | 0 -1/2 1/4 5/2 -5/4 -2 1 0 |
#             0 2 4 -5/2 -5 1/2 1 0 | 0 -2 4 5/2 -5 -1/2 1 0 | 0 -1 0 21/4 0 -21/4 0 1
#   A^T rows: p^i over the points, and 1 at infinity in the last row.
# Pairs of rows share their even and odd halves: (a + b, a - b).

cdef inline f8 bt8(float d0, float d1, float d2, float d3, float d4, float d5, float d6,
                   float d7) noexcept nogil:
    cdef float a1 = (d2 + d6) - F4_25 * d4, b1 = (d1 + d5) - F4_25 * d3
    cdef float a2 = (F0_25 * d2 - F1_25 * d4) + d6, b2 = (F0_5 * d1 - F2_5 * d3) + F2 * d5
    cdef float a3 = (F4 * d2 - F5 * d4) + d6, b3 = (F2 * d1 - F2_5 * d3) + F0_5 * d5
    return ((d0 - d6) + F5_25 * (d4 - d2), a1 + b1, a1 - b1, a2 + b2, a2 - b2, a3 + b3,
            a3 - b3, (d7 - d1) + F5_25 * (d3 - d5))


cdef inline f6 at8(float m0, float m1, float m2, float m3, float m4, float m5, float m6,
                   float m7) noexcept nogil:
    cdef float a1 = m1 + m2, s1 = m1 - m2, a2 = m3 + m4, s2 = m3 - m4
    cdef float a3 = m5 + m6, s3 = m5 - m6
    return (m0 + a1 + a2 + a3,
            s1 + F2 * s2 + F0_5 * s3,
            a1 + F4 * a2 + F0_25 * a3,
            s1 + F8 * s2 + F0_125 * s3,
            a1 + F16 * a2 + F0_0625 * a3,
            (s1 + F32 * s2 + F0_03125 * s3) + m7)


cdef inline void put4(f4 t, float* o) noexcept nogil:
    o[0] = t[0]
    o[STRIP] = t[1]
    o[2 * STRIP] = t[2]
    o[3 * STRIP] = t[3]


cdef inline void put6(f6 t, float* o) noexcept nogil:
    o[0] = t[0]
    o[STRIP] = t[1]
    o[2 * STRIP] = t[2]
    o[3 * STRIP] = t[3]
    o[4 * STRIP] = t[4]
    o[5 * STRIP] = t[5]


cdef inline void put8(f8 t, float* o) noexcept nogil:
    o[0] = t[0]
    o[STRIP] = t[1]
    o[2 * STRIP] = t[2]
    o[3 * STRIP] = t[3]
    o[4 * STRIP] = t[4]
    o[5 * STRIP] = t[5]
    o[6 * STRIP] = t[6]
    o[7 * STRIP] = t[7]


# ---- input transform: one channel, one tile row ----------------------------------------------

cdef inline void copy_runs(const float* buf, Py_ssize_t E, Py_ssize_t u0, Py_ssize_t n,
                           Py_ssize_t J, Py_ssize_t dw, const Py_ssize_t* tw,
                           const Py_ssize_t* start, float* v, Py_ssize_t es) noexcept nogil:
    """Copy the lanes of strip [u0, u0 + n) that are tiles into V, phase by phase.

    Each run (at most J - 1 tiles) is copied as 8, 16 or 32 floats, a constant size: a few
    vector moves, no libc call. The excess lands on later tiles of this channel, which this
    thread rewrites afterwards, or in the STRIP floats of slack at the end of each V row; buf
    has a STRIP of slack too. Copying less than a whole STRIP matters for short runs (4 tiles at
    dilation 4 on a 28x28 image): the stores are what this loop waits for."""
    cdef Py_ssize_t b, lo, hi, e
    cdef const float* src
    cdef float* dst = NULL
    cdef unsigned long long mask = 0
    if CE_WR_COMPRESS and dw > 1:
        # the strip's tiles, packed in registers and stored as whole vectors (_winograd_rows.h)
        for b in range(dw):
            lo = max(u0, b * J)
            hi = min(u0 + n, b * J + tw[b])
            if hi > lo:
                mask |= ((1ULL << (hi - lo)) - 1) << (lo - u0)
                if dst == NULL:
                    dst = v + start[b] + lo - b * J
        if mask:
            ce_wr_copy_tiles(buf, STRIP, E, mask, dst, es)
        return
    for b in range(dw):
        lo = max(u0, b * J)
        hi = min(u0 + n, b * J + tw[b])
        if hi <= lo:
            continue
        src = buf + lo - u0
        dst = v + start[b] + lo - b * J
        if hi - lo <= 8:
            for e in range(E):
                memcpy(dst + e * es, src + e * STRIP, 8 * sizeof(float))
        elif hi - lo <= 16:
            for e in range(E):
                memcpy(dst + e * es, src + e * STRIP, 16 * sizeof(float))
        else:
            for e in range(E):
                memcpy(dst + e * es, src + e * STRIP, STRIP * sizeof(float))


cdef void f23_input_row(const float* x0, Py_ssize_t rs, Py_ssize_t J, Py_ssize_t dw,
                        const Py_ssize_t* tw, const Py_ssize_t* start,
                        float* v, Py_ssize_t es) noexcept nogil:
    """V[e][t] (at v + e*es + t) for the tiles of one tile row and channel. x0: the first of
    the 4 padded rows of the patches, rs: the distance between those rows."""
    cdef float buf[17 * STRIP]
    cdef Py_ssize_t Q = dw * J       # distance between residues
    cdef const float* r0 = x0
    cdef const float* r1 = x0 + rs
    cdef const float* r2 = x0 + 2 * rs
    cdef const float* r3 = x0 + 3 * rs
    cdef Py_ssize_t s, j, u, n, u0
    cdef f4 c0, c1, c2, c3
    for s in range((Q + STRIP - 1) // STRIP):
        u0 = s * STRIP
        n = min(Q - u0, <Py_ssize_t>STRIP)
        for j in range(whole_vectors(n)):
            u = u0 + j
            # B^T along each patch column: columns 0, 1 are residues 0, 1 at this position,
            # columns 2, 3 the same residues one position further
            c0 = bt4(r0[u], r1[u], r2[u], r3[u])
            c1 = bt4(r0[Q + u], r1[Q + u], r2[Q + u], r3[Q + u])
            c2 = bt4(r0[u + 1], r1[u + 1], r2[u + 1], r3[u + 1])
            c3 = bt4(r0[Q + u + 1], r1[Q + u + 1], r2[Q + u + 1], r3[Q + u + 1])
            # ... then along each row: element e = 4*i + jj
            put4(bt4(c0[0], c1[0], c2[0], c3[0]), buf + j)
            put4(bt4(c0[1], c1[1], c2[1], c3[1]), buf + 4 * STRIP + j)
            put4(bt4(c0[2], c1[2], c2[2], c3[2]), buf + 8 * STRIP + j)
            put4(bt4(c0[3], c1[3], c2[3], c3[3]), buf + 12 * STRIP + j)
        copy_runs(buf, 16, u0, n, J, dw, tw, start, v, es)


cdef void f43_input_row(const float* x0, Py_ssize_t rs, Py_ssize_t J, Py_ssize_t dw,
                        const Py_ssize_t* tw, const Py_ssize_t* start,
                        float* v, Py_ssize_t es) noexcept nogil:
    """As f23_input_row for 6x6 patches: columns 0..3 are residues 0..3 at this position,
    columns 4, 5 residues 0, 1 one position further."""
    cdef float buf[37 * STRIP]
    cdef Py_ssize_t Q = dw * J, Q2 = 2 * dw * J, Q3 = 3 * dw * J
    cdef const float* r0 = x0
    cdef const float* r1 = x0 + rs
    cdef const float* r2 = x0 + 2 * rs
    cdef const float* r3 = x0 + 3 * rs
    cdef const float* r4 = x0 + 4 * rs
    cdef const float* r5 = x0 + 5 * rs
    cdef Py_ssize_t s, j, u, n, u0
    cdef f6 c0, c1, c2, c3, c4, c5
    for s in range((Q + STRIP - 1) // STRIP):
        u0 = s * STRIP
        n = min(Q - u0, <Py_ssize_t>STRIP)
        for j in range(whole_vectors(n)):
            u = u0 + j
            c0 = bt6(r0[u], r1[u], r2[u], r3[u], r4[u], r5[u])
            c1 = bt6(r0[Q + u], r1[Q + u], r2[Q + u], r3[Q + u], r4[Q + u], r5[Q + u])
            c2 = bt6(r0[Q2 + u], r1[Q2 + u], r2[Q2 + u], r3[Q2 + u], r4[Q2 + u], r5[Q2 + u])
            c3 = bt6(r0[Q3 + u], r1[Q3 + u], r2[Q3 + u], r3[Q3 + u], r4[Q3 + u], r5[Q3 + u])
            c4 = bt6(r0[u + 1], r1[u + 1], r2[u + 1], r3[u + 1], r4[u + 1], r5[u + 1])
            c5 = bt6(r0[Q + u + 1], r1[Q + u + 1], r2[Q + u + 1], r3[Q + u + 1],
                     r4[Q + u + 1], r5[Q + u + 1])
            put6(bt6(c0[0], c1[0], c2[0], c3[0], c4[0], c5[0]), buf + j)
            put6(bt6(c0[1], c1[1], c2[1], c3[1], c4[1], c5[1]), buf + 6 * STRIP + j)
            put6(bt6(c0[2], c1[2], c2[2], c3[2], c4[2], c5[2]), buf + 12 * STRIP + j)
            put6(bt6(c0[3], c1[3], c2[3], c3[3], c4[3], c5[3]), buf + 18 * STRIP + j)
            put6(bt6(c0[4], c1[4], c2[4], c3[4], c4[4], c5[4]), buf + 24 * STRIP + j)
            put6(bt6(c0[5], c1[5], c2[5], c3[5], c4[5], c5[5]), buf + 30 * STRIP + j)
        copy_runs(buf, 36, u0, n, J, dw, tw, start, v, es)


cdef inline f8 col8(const float* r, Py_ssize_t rs, Py_ssize_t u) noexcept nogil:
    # B^T along the patch column at element u of the first of 8 rows rs apart
    return bt8(r[u], r[rs + u], r[2 * rs + u], r[3 * rs + u], r[4 * rs + u], r[5 * rs + u],
               r[6 * rs + u], r[7 * rs + u])


cdef void f63_input_row(const float* x0, Py_ssize_t rs, Py_ssize_t J, Py_ssize_t dw,
                        const Py_ssize_t* tw, const Py_ssize_t* start,
                        float* v, Py_ssize_t es) noexcept nogil:
    """As f23_input_row for 8x8 patches: columns 0..5 are residues 0..5 at this position,
    columns 6, 7 residues 0, 1 one position further. The column transforms go through cols
    (64 values a lane would not fit in registers anyway), the row transforms read them back."""
    cdef float buf[65 * STRIP]
    cdef float cols[64 * STRIP]
    cdef Py_ssize_t Q = dw * J
    cdef Py_ssize_t s, j, u, n, u0, i
    for s in range((Q + STRIP - 1) // STRIP):
        u0 = s * STRIP
        n = min(Q - u0, <Py_ssize_t>STRIP)
        for j in range(whole_vectors(n)):
            u = u0 + j
            put8(col8(x0, rs, u), cols + j)
            put8(col8(x0, rs, Q + u), cols + 8 * STRIP + j)
            put8(col8(x0, rs, 2 * Q + u), cols + 16 * STRIP + j)
            put8(col8(x0, rs, 3 * Q + u), cols + 24 * STRIP + j)
            put8(col8(x0, rs, 4 * Q + u), cols + 32 * STRIP + j)
            put8(col8(x0, rs, 5 * Q + u), cols + 40 * STRIP + j)
            put8(col8(x0, rs, u + 1), cols + 48 * STRIP + j)
            put8(col8(x0, rs, Q + u + 1), cols + 56 * STRIP + j)
        for i in range(8):
            # row i of the patch after the column transforms: element 8 * i + column
            for j in range(whole_vectors(n)):
                put8(bt8(cols[i * STRIP + j], cols[(8 + i) * STRIP + j],
                         cols[(16 + i) * STRIP + j], cols[(24 + i) * STRIP + j],
                         cols[(32 + i) * STRIP + j], cols[(40 + i) * STRIP + j],
                         cols[(48 + i) * STRIP + j], cols[(56 + i) * STRIP + j]),
                     buf + 8 * i * STRIP + j)
        copy_runs(buf, 64, u0, n, J, dw, tw, start, v, es)


# ---- output transform: one output channel, one block of tiles --------------------------------

cdef inline void scatter_run(const float* buf, Py_ssize_t m, Py_ssize_t tj0, Py_ssize_t n,
                             float* y, Py_ssize_t row_step, Py_ssize_t nrows, Py_ssize_t dw,
                             const Py_ssize_t* ncols, float bias, ce_act_t act) noexcept nogil:
    """y[r*row_step + dw*(m*(tj0 + j) + c)] = act(buf[(m*r + c)*STRIP + j] + bias) for the
    outputs that exist: rows r < nrows, tiles tj0 + j < ncols[c]."""
    cdef Py_ssize_t r, c, j, cnt, full = 0, step = m * dw
    cdef const float* src
    cdef float* dst
    if dw == 1:
        full = max(min(ncols[m - 1] - tj0, n), 0)       # tiles whose m columns all exist
        for r in range(nrows):
            dst = y + r * row_step + m * tj0
            src = buf + m * r * STRIP
            if m != 6:
                # interleaved by vector shuffles, with the output step (_winograd_rows.h)
                ce_wr_interleave(src, STRIP, <int>m, full, dst, bias, act)
            else:
                for j in range(full):
                    dst[6 * j] = activate(src[j] + bias, act)
                    dst[6 * j + 1] = activate(src[STRIP + j] + bias, act)
                    dst[6 * j + 2] = activate(src[2 * STRIP + j] + bias, act)
                    dst[6 * j + 3] = activate(src[3 * STRIP + j] + bias, act)
                    dst[6 * j + 4] = activate(src[4 * STRIP + j] + bias, act)
                    dst[6 * j + 5] = activate(src[5 * STRIP + j] + bias, act)
    for r in range(nrows):
        for c in range(m):
            cnt = min(ncols[c] - tj0, n)
            src = buf + (m * r + c) * STRIP
            dst = y + r * row_step + dw * (m * tj0 + c)
            for j in range(full, cnt):
                dst[j * step] = activate(src[j] + bias, act)


cdef inline void scatter_strip(const float* buf, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t n,
                               float* y, Py_ssize_t row_step, Py_ssize_t nrows, Py_ssize_t dw,
                               const Py_ssize_t* tw, const Py_ssize_t* start,
                               const Py_ssize_t* cols, float bias, ce_act_t act) noexcept nogil:
    """Output step for tiles [j0, j0 + n) of a tile row (y: its first output row, column 0),
    split into runs of one column phase each; cols[MAX_M*b + c]: tiles of phase b whose output
    column c exists."""
    cdef Py_ssize_t b, lo, hi
    for b in range(dw):
        lo = max(j0, start[b])
        hi = min(j0 + n, start[b] + tw[b])
        if hi > lo:
            scatter_run(buf + lo - j0, m, lo - start[b], hi - lo, y + b, row_step, nrows, dw,
                        cols + MAX_M * b, bias, act)


cdef inline void scatter_rows(const float* buf, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t n,
                              const Py_ssize_t* rows, Py_ssize_t per_row, float* yk,
                              Py_ssize_t image_step, Py_ssize_t OW, Py_ssize_t dh, Py_ssize_t dw,
                              const Py_ssize_t* tw, const Py_ssize_t* start,
                              const Py_ssize_t* cols, float bias, ce_act_t act) noexcept nogil:
    """Output step for tiles [j0, j0 + n) of a block, split by tile row (per_row tiles each;
    rows: the block's rows of the table, yk: y[0, k])."""
    cdef Py_ssize_t r, lo, hi, row0
    cdef const Py_ssize_t* row
    for r in range(j0 // per_row, (j0 + n - 1) // per_row + 1):
        lo = max(j0, r * per_row)
        hi = min(j0 + n, (r + 1) * per_row)
        row = rows + r * ROW_COLS
        row0 = row[ROW_A] + dh * m * row[ROW_TI]
        scatter_strip(buf + lo - j0, m, lo - r * per_row, hi - lo,
                      yk + row[ROW_N] * image_step + row0 * OW, dh * OW, row[ROW_NR], dw,
                      tw, start, cols, bias, act)


cdef inline void finish_block(float* buf, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t n,
                              const Py_ssize_t* rows, Py_ssize_t per_row, float* yk,
                              Py_ssize_t image_step, Py_ssize_t OW, Py_ssize_t dh, Py_ssize_t dw,
                              const Py_ssize_t* tw, const Py_ssize_t* start,
                              const Py_ssize_t* cols, float bias, ce_act_t act) noexcept nogil:
    """Output step and stores of an output block's m*m strips in buf. Activations other than
    the clamps first run as one vector pass per strip (whole vectors; lanes past n are never
    stored): the scalar step computes a whole vector per output. The stores then add -0.0."""
    cdef Py_ssize_t e
    if act.code > ACT_RELU6:
        for e in range(m * m):
            ce_act_row(buf + e * STRIP, (n + 15) & ~15, bias, act)
        bias, act = -0.0, no_act()
    scatter_rows(buf, m, j0, n, rows, per_row, yk, image_step, OW, dh, dw, tw, start, cols,
                 bias, act)


cdef void f23_output_block(const float* mm, Py_ssize_t es, Py_ssize_t T,
                           const Py_ssize_t* rows, Py_ssize_t per_row, float* yk,
                           Py_ssize_t image_step, Py_ssize_t OW, Py_ssize_t dh, Py_ssize_t dw,
                           const Py_ssize_t* tw, const Py_ssize_t* start,
                           const Py_ssize_t* cols, float bias, ce_act_t act) noexcept nogil:
    """Y = A^T M A for the T tiles of a block (M[e][t] at mm + e*es + t), then the output step.
    The block's tiles are contiguous in M, so the strips run across tile rows: a row of 7
    tiles would fill less than half a vector."""
    cdef float buf[4 * STRIP]
    cdef Py_ssize_t s, j, q, n, j0
    cdef f2 k0, k1, k2, k3, y0, y1
    for s in range((T + STRIP - 1) // STRIP):
        j0 = s * STRIP
        n = min(T - j0, <Py_ssize_t>STRIP)
        for j in range(whole_vectors(n)):
            q = j0 + j
            # A^T along each column jj of M (elements jj, 4 + jj, 8 + jj, 12 + jj) ...
            k0 = at4(mm[q], mm[4 * es + q], mm[8 * es + q], mm[12 * es + q])
            k1 = at4(mm[es + q], mm[5 * es + q], mm[9 * es + q], mm[13 * es + q])
            k2 = at4(mm[2 * es + q], mm[6 * es + q], mm[10 * es + q], mm[14 * es + q])
            k3 = at4(mm[3 * es + q], mm[7 * es + q], mm[11 * es + q], mm[15 * es + q])
            # ... then along each row
            y0 = at4(k0[0], k1[0], k2[0], k3[0])
            y1 = at4(k0[1], k1[1], k2[1], k3[1])
            buf[j] = y0[0]
            buf[STRIP + j] = y0[1]
            buf[2 * STRIP + j] = y1[0]
            buf[3 * STRIP + j] = y1[1]
        finish_block(buf, 2, j0, n, rows, per_row, yk, image_step, OW, dh, dw, tw, start, cols,
                     bias, act)


cdef inline f6 col6(const float* mm, Py_ssize_t es, Py_ssize_t q, Py_ssize_t jj) noexcept nogil:
    # column jj of the 6x6 M of tile q
    return (mm[jj * es + q], mm[(6 + jj) * es + q], mm[(12 + jj) * es + q],
            mm[(18 + jj) * es + q], mm[(24 + jj) * es + q], mm[(30 + jj) * es + q])


cdef inline f4 at6v(f6 t) noexcept nogil:
    return at6(t[0], t[1], t[2], t[3], t[4], t[5])


cdef void f43_output_block(const float* mm, Py_ssize_t es, Py_ssize_t T,
                           const Py_ssize_t* rows, Py_ssize_t per_row, float* yk,
                           Py_ssize_t image_step, Py_ssize_t OW, Py_ssize_t dh, Py_ssize_t dw,
                           const Py_ssize_t* tw, const Py_ssize_t* start,
                           const Py_ssize_t* cols, float bias, ce_act_t act) noexcept nogil:
    """As f23_output_block for 4x4 output tiles."""
    cdef float buf[16 * STRIP]
    cdef Py_ssize_t s, j, q, n, j0
    cdef f4 k0, k1, k2, k3, k4, k5
    for s in range((T + STRIP - 1) // STRIP):
        j0 = s * STRIP
        n = min(T - j0, <Py_ssize_t>STRIP)
        for j in range(whole_vectors(n)):
            q = j0 + j
            k0 = at6v(col6(mm, es, q, 0))
            k1 = at6v(col6(mm, es, q, 1))
            k2 = at6v(col6(mm, es, q, 2))
            k3 = at6v(col6(mm, es, q, 3))
            k4 = at6v(col6(mm, es, q, 4))
            k5 = at6v(col6(mm, es, q, 5))
            put4(at6(k0[0], k1[0], k2[0], k3[0], k4[0], k5[0]), buf + j)
            put4(at6(k0[1], k1[1], k2[1], k3[1], k4[1], k5[1]), buf + 4 * STRIP + j)
            put4(at6(k0[2], k1[2], k2[2], k3[2], k4[2], k5[2]), buf + 8 * STRIP + j)
            put4(at6(k0[3], k1[3], k2[3], k3[3], k4[3], k5[3]), buf + 12 * STRIP + j)
        finish_block(buf, 4, j0, n, rows, per_row, yk, image_step, OW, dh, dw, tw, start, cols,
                     bias, act)


cdef inline f6 col8m(const float* mm, Py_ssize_t es, Py_ssize_t q, Py_ssize_t jj) noexcept nogil:
    # A^T along column jj of the 8x8 M of tile q
    return at8(mm[jj * es + q], mm[(8 + jj) * es + q], mm[(16 + jj) * es + q],
               mm[(24 + jj) * es + q], mm[(32 + jj) * es + q], mm[(40 + jj) * es + q],
               mm[(48 + jj) * es + q], mm[(56 + jj) * es + q])


cdef void f63_output_block(const float* mm, Py_ssize_t es, Py_ssize_t T,
                           const Py_ssize_t* rows, Py_ssize_t per_row, float* yk,
                           Py_ssize_t image_step, Py_ssize_t OW, Py_ssize_t dh, Py_ssize_t dw,
                           const Py_ssize_t* tw, const Py_ssize_t* start,
                           const Py_ssize_t* cols, float bias, ce_act_t act) noexcept nogil:
    """As f23_output_block for 6x6 output tiles; the column transforms go through ks."""
    cdef float buf[36 * STRIP]
    cdef float ks[48 * STRIP]
    cdef Py_ssize_t s, j, q, n, j0, i
    for s in range((T + STRIP - 1) // STRIP):
        j0 = s * STRIP
        n = min(T - j0, <Py_ssize_t>STRIP)
        for j in range(whole_vectors(n)):
            q = j0 + j
            put6(col8m(mm, es, q, 0), ks + j)
            put6(col8m(mm, es, q, 1), ks + 6 * STRIP + j)
            put6(col8m(mm, es, q, 2), ks + 12 * STRIP + j)
            put6(col8m(mm, es, q, 3), ks + 18 * STRIP + j)
            put6(col8m(mm, es, q, 4), ks + 24 * STRIP + j)
            put6(col8m(mm, es, q, 5), ks + 30 * STRIP + j)
            put6(col8m(mm, es, q, 6), ks + 36 * STRIP + j)
            put6(col8m(mm, es, q, 7), ks + 42 * STRIP + j)
        for i in range(6):
            for j in range(whole_vectors(n)):
                put6(at8(ks[i * STRIP + j], ks[(6 + i) * STRIP + j], ks[(12 + i) * STRIP + j],
                         ks[(18 + i) * STRIP + j], ks[(24 + i) * STRIP + j],
                         ks[(30 + i) * STRIP + j], ks[(36 + i) * STRIP + j],
                         ks[(42 + i) * STRIP + j]), buf + 6 * i * STRIP + j)
        finish_block(buf, 6, j0, n, rows, per_row, yk, image_step, OW, dh, dw, tw, start, cols,
                     bias, act)
