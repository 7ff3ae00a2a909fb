/* Batched matmul of small blocks read in place, for float32 and float64:
 *
 *     o[t][m, n] = (accumulate ? o[t][m, n] : 0) + sum_k a[t][m, k] * b[t][k, n]
 *
 * for t < batch, where b and o have unit stride along n and a has any strides. Compiled
 * and loaded by kernels/native.py.
 *
 * The Monarch multiply's factors are batches of small blocks (K and N of 16 to a few
 * hundred) whose operands are strided views of the activations. A BLAS packs both
 * operands of every block product into its own layout first, which at these sizes is a
 * large share of the work (a batched GEMM runs such blocks well below its large-matrix
 * rate). Here a is read where it lies, one entry at a time, broadcast to a vector;
 * SIMD runs along n. A register tile of MR rows x NV vectors of n (NV <= 4; MR * NV <=
 * 24 accumulators with 32 vector registers, 12 with 16) is accumulated over k: MR
 * broadcasts and NV loads per MR * NV fused multiply-adds. Only b's K x NV-vector
 * column panel is packed (zero-padded to whole vectors, so that ragged n needs no other
 * code), once per block and panel; it stays in L1 while the rows of a stream past. Rows
 * past the last whole tile run in tiles of 4, 2 and 1 rows. Blocks and column panels
 * are split over threads with OpenMP when threads > 1.
 *
 * Returns 0, or 1 where the packing buffer could not be allocated (then nothing is
 * written).
 */
#include <stdlib.h>

#include "common.h"

#define PANEL_VECTORS 4 /* NV of a whole column panel */
/* Rows of a tile NV vectors wide: 24 accumulators at most with 32 vector registers (and at
 * most 8 rows: rows 4 KiB apart share an L1 set), 12 with 16. */
#if WIDE_REGISTER_FILE
#define ROWS_2 8
#define ROWS_3 8
#define ROWS_4 6
#else
#define ROWS_2 6
#define ROWS_3 4
#define ROWS_4 2
#endif


/* Rows ROWS x NV vectors of the packed panel bp (K x NV vectors); `lanes` of the last
 * vector are in o (all of them when it is LANES). Constant ROWS and NV: unrolled, every
 * accumulator in a register. */
#define DEFINE_TILE(NAME, T, V, ROWS, NV)                                                  \
    static inline __attribute__((always_inline)) void NAME(                                \
        const T *a, int64_t a_m, int64_t a_k, const V *bp, int64_t K, T *o, int64_t o_m,    \
        int64_t lanes, int accumulate) {                                                   \
        V acc[ROWS][NV];                                                                   \
        _Pragma("GCC unroll 24") for (int m = 0; m < ROWS; ++m)                            \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[m][v] = (V){0};       \
        for (int64_t k = 0; k < K; ++k) {                                                  \
            V col[NV];                                                                     \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) col[v] = bp[k * NV + v];  \
            _Pragma("GCC unroll 24") for (int m = 0; m < ROWS; ++m) {                      \
                const V x = (V){0} + a[m * a_m + k * a_k];                                 \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[m][v] += x * col[v]; \
            }                                                                              \
        }                                                                                  \
        const int64_t lanes_per_vector = VECTOR_BYTES / sizeof(T);                         \
        _Pragma("GCC unroll 24") for (int m = 0; m < ROWS; ++m)                            \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) {                         \
                T *out = o + m * o_m + v * lanes_per_vector;                               \
                if (v < NV - 1 || lanes == lanes_per_vector) {                             \
                    *(V *)out = accumulate ? *(V *)out + acc[m][v] : acc[m][v];            \
                } else {                                                                   \
                    for (int64_t l = 0; l < lanes; ++l)                                    \
                        out[l] = accumulate ? out[l] + acc[m][v][l] : acc[m][v][l];        \
                }                                                                          \
            }                                                                              \
    }

/* All rows of one column panel of NV vectors: whole tiles of ROWS rows, then what is left
 * in tiles of 4, 2 and 1 rows. */
#define DEFINE_PANEL(NAME, T, V, ROWS, NV)                                                 \
    DEFINE_TILE(NAME##_tile, T, V, ROWS, NV)                                               \
    DEFINE_TILE(NAME##_four, T, V, 4, NV)                                                  \
    DEFINE_TILE(NAME##_two, T, V, 2, NV)                                                   \
    DEFINE_TILE(NAME##_one, T, V, 1, NV)                                                   \
    static void NAME(const T *a, int64_t a_m, int64_t a_k, const V *bp, int64_t M,         \
                     int64_t K, T *o, int64_t o_m, int64_t lanes, int accumulate) {         \
        int64_t m = 0;                                                                     \
        for (; m + ROWS <= M; m += ROWS)                                                   \
            NAME##_tile(a + m * a_m, a_m, a_k, bp, K, o + m * o_m, o_m, lanes, accumulate); \
        for (; m + 4 <= M; m += 4)                                                         \
            NAME##_four(a + m * a_m, a_m, a_k, bp, K, o + m * o_m, o_m, lanes, accumulate); \
        for (; m + 2 <= M; m += 2)                                                         \
            NAME##_two(a + m * a_m, a_m, a_k, bp, K, o + m * o_m, o_m, lanes, accumulate);  \
        for (; m < M; ++m)                                                                 \
            NAME##_one(a + m * a_m, a_m, a_k, bp, K, o + m * o_m, o_m, lanes, accumulate);  \
    }

#define DEFINE_BLOCK_BMM(NAME, T, V)                                                       \
    DEFINE_PANEL(NAME##_panel1, T, V, 8, 1)                                                \
    DEFINE_PANEL(NAME##_panel2, T, V, ROWS_2, 2)                                           \
    DEFINE_PANEL(NAME##_panel3, T, V, ROWS_3, 3)                                           \
    DEFINE_PANEL(NAME##_panel4, T, V, ROWS_4, 4)                                           \
    int NAME(const T *a, int64_t a_t, int64_t a_m, int64_t a_k, const T *b, int64_t b_t,    \
             int64_t b_k, T *o, int64_t o_t, int64_t o_m, int64_t batch, int64_t M,         \
             int64_t N, int64_t K, int accumulate, int threads) {                           \
        const int64_t lanes = VECTOR_BYTES / sizeof(T), width = PANEL_VECTORS * lanes;     \
        const int64_t panels = (N + width - 1) / width;                                    \
        int failures = 0; /* shared by the team: see all_allocated */                      \
        _Pragma("omp parallel num_threads(threads) if(threads > 1)")                       \
        {                                                                                  \
            V *bp = aligned_alloc(VECTOR_BYTES, (PANEL_VECTORS * K + 1) * sizeof(V));      \
            if (all_allocated(bp != NULL, &failures)) {                                    \
                _Pragma("omp for collapse(2) schedule(static)")                            \
                for (int64_t t = 0; t < batch; ++t)                                        \
                    for (int64_t panel = 0; panel < panels; ++panel) {                     \
                        const int64_t n0 = panel * width, n = MIN(width, N - n0);          \
                        const int64_t nv = (n + lanes - 1) / lanes;                        \
                        const int64_t last = n - (nv - 1) * lanes; /* lanes in the last */ \
                        const T *b0 = b + t * b_t + n0;                                    \
                        for (int64_t k = 0; k < K; ++k) /* pack b's panel, zero-padded */  \
                            for (int64_t v = 0; v < nv; ++v) {                             \
                                const T *from = b0 + k * b_k + v * lanes;                  \
                                V x = {0};                                                 \
                                if (v < nv - 1 || last == lanes)                           \
                                    x = *(const V *)from;                                  \
                                else                                                       \
                                    for (int64_t l = 0; l < last; ++l) x[l] = from[l];     \
                                bp[k * nv + v] = x;                                        \
                            }                                                              \
                        const T *a0 = a + t * a_t;                                         \
                        T *o0 = o + t * o_t + n0;                                          \
                        if (nv == 4)                                                       \
                            NAME##_panel4(a0, a_m, a_k, bp, M, K, o0, o_m, last, accumulate); \
                        else if (nv == 3)                                                  \
                            NAME##_panel3(a0, a_m, a_k, bp, M, K, o0, o_m, last, accumulate); \
                        else if (nv == 2)                                                  \
                            NAME##_panel2(a0, a_m, a_k, bp, M, K, o0, o_m, last, accumulate); \
                        else                                                               \
                            NAME##_panel1(a0, a_m, a_k, bp, M, K, o0, o_m, last, accumulate); \
                    }                                                                      \
            }                                                                              \
            free(bp);                                                                      \
        }                                                                                  \
        return failures != 0;                                                              \
    }

DEFINE_BLOCK_BMM(neuralnum_block_bmm_f32, float, f32_vec)
DEFINE_BLOCK_BMM(neuralnum_block_bmm_f64, double, f64_vec)
