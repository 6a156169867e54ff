/* The channel block of the blocked layout (NCHWc, _nchwc.h): one vector register of
 * channels, 16 floats with AVX-512 and 8 without (AVX2), so that a tile's sums stay in the 32
 * or 16 registers: 6 pixels x 4 blocks or 6 x 2, plus the weights. The vector types and
 * unaligned loads and stores of one block, for every kernel on blocks (_nchwc.h and the ones
 * it includes, pool_nchwc.pyx). */
#ifndef CE_NCHWC_BLOCK_H
#define CE_NCHWC_BLOCK_H

#if defined(__AVX512F__)
#define CE_NC_B 16            /* channels per block */
#define CE_NC_GROUP 4         /* output blocks per pointwise tile */
#else
#define CE_NC_B 8
#define CE_NC_GROUP 2
#endif
#define CE_NC_TILE_PIXELS 6   /* pixels per pointwise tile */

#include <stddef.h>

/* Where tile t of a plane (or row) of P pixels starts (the pointwise and dense kernels): the
 * plane's ceil(P / 6) tiles as even as can be (6 or 5 pixels, say), not 6 each and a last one
 * of what is left: a tile of one pixel keeps too few sums in flight to hide the multiply-add
 * latency, and cost a 7x7 plane's 49th pixel as much as four others (RegNetX-400MF's 400->400
 * 1x1 on 7x7: 0.186 -> 0.179 ms at one thread; the model 1.5% faster, bench/bench_zoo.py).
 * Fixed by P alone, so the threads' split of the tiles changes no sum. */
typedef struct { ptrdiff_t base, extra; } ce_nc_tiling;   /* P = T base + extra */

static inline ce_nc_tiling ce_nc_tiles(ptrdiff_t P)
{
    ptrdiff_t T = (P + CE_NC_TILE_PIXELS - 1) / CE_NC_TILE_PIXELS;
    ce_nc_tiling g = {T ? P / T : 0, T ? P % T : 0};
    return g;
}

/* no division: called for every tile, some of which are a few hundred cycles of work */
static inline ptrdiff_t ce_nc_tile_start(ce_nc_tiling g, ptrdiff_t t)
{
    return t * g.base + (t < g.extra ? t : g.extra);
}

typedef float ce_nc_vf __attribute__((vector_size(CE_NC_B * 4)));
typedef float ce_nc_vfu __attribute__((vector_size(CE_NC_B * 4), aligned(4), may_alias));
typedef int ce_nc_vi __attribute__((vector_size(CE_NC_B * 4)));

/* activations and weights come from numpy arrays: no alignment is assumed */
#define CE_NC_LD(p) ((ce_nc_vf)(*(const ce_nc_vfu *)(p)))
#define CE_NC_ST(p, v) (*(ce_nc_vfu *)(p) = (v))

#endif
