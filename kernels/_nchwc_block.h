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

typedef float ce_nc_vf __attribute__((vector_size(CE_NC_B * 4)));
typedef float ce_nc_vfu __attribute__((vector_size(CE_NC_B * 4), aligned(4), may_alias));
typedef int ce_nc_vi __attribute__((vector_size(CE_NC_B * 4)));

/* activations and weights come from numpy arrays: no alignment is assumed */
#define CE_NC_LD(p) ((ce_nc_vf)(*(const ce_nc_vfu *)(p)))
#define CE_NC_ST(p, v) (*(ce_nc_vfu *)(p) = (v))

#endif
