/* Batched matmul with the batch index innermost (the "interleaved" or "compact" layout),
 * for float32 and float64:
 *
 *     o[m, n; i] = (accumulate ? o[m, n; i] : 0) + sum_k a[m, k; i] * b[k, n; i]
 *
 * for 0 <= i < batch, 0 <= m < M, 0 <= n < N, where x[m, k; i] = x[m * x_m + k * x_k + i]:
 * each operand has unit stride along the batch and free strides otherwise. Compiled and
 * loaded by kernels/native.py.
 *
 * A BLAS cannot take this layout (no matrix of it has a unit stride), and it is the
 * layout of the Monarch multiply's second factor in row-major activations: there the
 * batch is the block index i, which the permutation P puts innermost in the output.
 * Here SIMD runs along the batch instead: a vector holds one (m, n) entry of LANES
 * consecutive matrices, and a register tile of MR x NR such vectors (4 x 5 with 32
 * vector registers, 3 x 4 with 16) is accumulated over k (MR + NR loads per MR * NR
 * fused multiply-adds), as in a GEMM. As in a GEMM, the operands are first packed: for
 * a block of groups of LANES matrices (as many as PACKED_B_BYTES of packed b holds),
 * all of b into column panels of K x NR vectors, then each MR-row panel of a (K x MR
 * vectors) of every group of the block in turn, so that the tile reads both
 * sequentially from cache whatever the strides (in the Monarch layout the rows of a
 * tile are 32 KiB apart, which maps them all to one L1 set) and a's cache lines are
 * used whole. Panels are zero-padded to whole tiles and whole vectors, so that one tile
 * computes every case; the edges are written back entry by entry. Blocks of groups
 * and row panels are split over threads with OpenMP when threads > 1.
 *
 * Returns 0, or 1 where the packing buffers could not be allocated (then nothing is
 * written).
 */
#include <stdlib.h>

#include "common.h"

#if WIDE_REGISTER_FILE
#define MR 4
#define NR 5 /* 20 accumulators + 5 operands of 32 registers */
#else
#define MR 3
#define NR 4 /* 12 accumulators + 4 operands of 16 registers */
#endif
#define PACKED_B_BYTES (512 * 1024) /* b of this many bytes' worth of groups is packed at once */

#define DEFINE_INTERLEAVED_BMM(NAME, T, V)                                                 \
    enum { NAME##_LANES = VECTOR_BYTES / sizeof(T) };                                      \
                                                                                           \
    /* dst[c * pad + r] = lanes [0, lanes) of x[r, c] for r < rows, c < cols; zero for     \
     * rows <= r < pad and for the lanes past `lanes`. */                                  \
    static void NAME##_pack(const T *x, int64_t x_r, int64_t x_c, int64_t rows,            \
                            int64_t cols, int64_t pad, int64_t lanes, V *dst) {            \
        for (int64_t c = 0; c < cols; ++c)                                                 \
            for (int64_t r = 0; r < pad; ++r) {                                            \
                V v = {0};                                                                 \
                if (r < rows && lanes == NAME##_LANES)                                     \
                    v = *(const V *)(x + r * x_r + c * x_c);                               \
                else if (r < rows)                                                         \
                    for (int64_t l = 0; l < lanes; ++l) v[l] = x[r * x_r + c * x_c + l];   \
                dst[c * pad + r] = v;                                                      \
            }                                                                              \
    }                                                                                      \
                                                                                           \
    /* One MR x NR tile of packed panels, accumulated in registers (constant bounds,       \
     * unrolled), then written to o: whole vectors where the tile is whole, else the       \
     * mr x nr entries' first `lanes` lanes one by one. */                                 \
    static inline __attribute__((always_inline)) void NAME##_tile(                         \
        const V *ap, const V *bp, int64_t K, T *o, int64_t o_m, int64_t o_n, int mr,       \
        int nr, int64_t lanes, int accumulate) {                                           \
        V acc[MR][NR];                                                                     \
        _Pragma("GCC unroll 8") for (int m = 0; m < MR; ++m)                               \
            _Pragma("GCC unroll 8") for (int n = 0; n < NR; ++n) acc[m][n] = (V){0};       \
        for (int64_t k = 0; k < K; ++k) {                                                  \
            V row[MR];                                                                     \
            _Pragma("GCC unroll 8") for (int m = 0; m < MR; ++m) row[m] = ap[k * MR + m];  \
            _Pragma("GCC unroll 8") for (int n = 0; n < NR; ++n) {                         \
                V col = bp[k * NR + n];                                                    \
                IN_REGISTER(col); /* one load per column, not one per FMA */               \
                _Pragma("GCC unroll 8") for (int m = 0; m < MR; ++m)                       \
                    acc[m][n] += row[m] * col;                                             \
            }                                                                              \
        }                                                                                  \
        if (mr == MR && nr == NR && lanes == NAME##_LANES) {                               \
            _Pragma("GCC unroll 8") for (int m = 0; m < MR; ++m)                           \
                _Pragma("GCC unroll 8") for (int n = 0; n < NR; ++n) {                     \
                    V *out = (V *)(o + m * o_m + n * o_n);                                 \
                    *out = accumulate ? *out + acc[m][n] : acc[m][n];                      \
                }                                                                          \
            return;                                                                        \
        }                                                                                  \
        T part[MR][NR][NAME##_LANES];                                                      \
        _Pragma("GCC unroll 8") for (int m = 0; m < MR; ++m)                               \
            _Pragma("GCC unroll 8") for (int n = 0; n < NR; ++n)                           \
                *(V *)part[m][n] = acc[m][n];                                              \
        for (int m = 0; m < mr; ++m)                                                       \
            for (int n = 0; n < nr; ++n)                                                   \
                for (int64_t l = 0; l < lanes; ++l) {                                      \
                    T *out = o + m * o_m + n * o_n + l;                                    \
                    *out = accumulate ? *out + part[m][n][l] : part[m][n][l];              \
                }                                                                          \
    }                                                                                      \
                                                                                           \
    int NAME(const T *a, int64_t a_m, int64_t a_k, const T *b, int64_t b_k, int64_t b_n,    \
             T *o, int64_t o_m, int64_t o_n, int64_t batch, int64_t M, int64_t N,           \
             int64_t K, int accumulate, int threads) {                                      \
        const int64_t groups = (batch + NAME##_LANES - 1) / NAME##_LANES;                  \
        const int64_t panels = (M + MR - 1) / MR, columns = (N + NR - 1) / NR;             \
        const int64_t group_size = columns * NR * K; /* vectors of b per packed group */   \
        const int64_t per_block = MIN(groups, MAX(1, PACKED_B_BYTES / (int64_t)sizeof(V)   \
                                                         / MAX(1, group_size)));            \
        const int64_t blocks = (groups + per_block - 1) / per_block;                       \
        int failures = 0; /* shared by the team: see all_allocated */                      \
        _Pragma("omp parallel num_threads(threads) if(threads > 1)")                       \
        {                                                                                  \
            V *bp = aligned_alloc(VECTOR_BYTES, (per_block * group_size + 1) * sizeof(V)); \
            V *ap = aligned_alloc(VECTOR_BYTES, (MR * K + 1) * sizeof(V));                 \
            int64_t packed_block = -1;                                                     \
            if (all_allocated(bp != NULL && ap != NULL, &failures)) {                      \
                _Pragma("omp for collapse(2) schedule(static)")                            \
                for (int64_t block = 0; block < blocks; ++block)                           \
                    for (int64_t panel = 0; panel < panels; ++panel) {                     \
                        const int64_t first = block * per_block;                           \
                        const int64_t last = MIN(groups, first + per_block);               \
                        if (block != packed_block) { /* b of this block's groups */        \
                            for (int64_t g = first; g < last; ++g)                         \
                                for (int64_t c = 0; c < columns; ++c)                      \
                                    NAME##_pack(b + c * NR * b_n + g * NAME##_LANES, b_n,  \
                                                b_k, MIN(NR, N - c * NR), K, NR,           \
                                                MIN(NAME##_LANES, batch - g * NAME##_LANES), \
                                                bp + (g - first) * group_size + c * NR * K); \
                            packed_block = block;                                          \
                        }                                                                  \
                        const int64_t m0 = panel * MR;                                     \
                        const int mr = (int)MIN(MR, M - m0);                               \
                        for (int64_t g = first; g < last; ++g) { /* one row panel: a's     \
                                          cache lines are used whole, group after group */ \
                            const int64_t i = g * NAME##_LANES;                            \
                            const int64_t lanes = MIN(NAME##_LANES, batch - i);            \
                            NAME##_pack(a + m0 * a_m + i, a_m, a_k, mr, K, MR, lanes, ap); \
                            for (int64_t c = 0; c < columns; ++c)                          \
                                NAME##_tile(ap, bp + (g - first) * group_size + c * NR * K, \
                                            K, o + m0 * o_m + c * NR * o_n + i, o_m, o_n,  \
                                            mr, (int)MIN(NR, N - c * NR), lanes,           \
                                            accumulate);                                   \
                        }                                                                  \
                    }                                                                      \
            }                                                                              \
            free(bp);                                                                      \
            free(ap);                                                                      \
        }                                                                                  \
        return failures != 0;                                                              \
    }

DEFINE_INTERLEAVED_BMM(neuralnum_interleaved_bmm_f32, float, f32_vec)
DEFINE_INTERLEAVED_BMM(neuralnum_interleaved_bmm_f64, double, f64_vec)
