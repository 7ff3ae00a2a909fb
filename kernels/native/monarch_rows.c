/* The row-major Monarch forward y = P L P^T R x, chunk after chunk of rows, for float32 and
 * float64 (see kernels/monarch_reference.py for the layouts). Compiled and loaded by
 * kernels/native.py with block_bmm.c and interleaved_bmm.c, whose kernels it calls.
 *
 * The same two products as the reference's Python loop, without its per-call cost: for
 * each chunk of c rows, h (k, c, q) = x (k, c, p) @ R^T (k, p, q) by block_bmm, then
 * y[chunk] read as (q, c, s) = h read as (q, c, k) @ L^T (q, k, s) by interleaved_bmm,
 * while the chunk's h is still in cache.
 *
 * x[r, j * p + c] = x[r * x_r + (j * p + c) * x_c]; R^T[j][c, i] = rt[j * q + c * rt_c + i];
 * L^T[i][j, a] = lt[i + j * q + a * k * q] (L with its block index innermost); y row-major
 * with rows y_r apart; h holds the chunks' h one after another when keep (N * k * q values),
 * else one chunk's (c * k * q values). Returns 0, or 1 where a kernel could not allocate
 * its packing buffers.
 */
#include <stdint.h>

int neuralnum_block_bmm_f32(const float *, int64_t, int64_t, int64_t, const float *, int64_t,
                            int64_t, float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                            int64_t, int, int);
int neuralnum_block_bmm_f64(const double *, int64_t, int64_t, int64_t, const double *,
                            int64_t, int64_t, double *, int64_t, int64_t, int64_t, int64_t,
                            int64_t, int64_t, int, int);
int neuralnum_interleaved_bmm_f32(const float *, int64_t, int64_t, const float *, int64_t,
                                  int64_t, float *, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, int, int);
int neuralnum_interleaved_bmm_f64(const double *, int64_t, int64_t, const double *, int64_t,
                                  int64_t, double *, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, int, int);

#define DEFINE_MONARCH_ROWS(NAME, T, BLOCK_BMM, INTERLEAVED_BMM)                           \
    int NAME(const T *x, int64_t x_r, int64_t x_c, const T *rt, int64_t rt_c, const T *lt,  \
             T *y, int64_t y_r, T *h, int64_t n, int64_t k, int64_t p, int64_t q,          \
             int64_t s, int64_t c, int keep, int threads) {                                 \
        for (int64_t r0 = 0; r0 < n; r0 += c) {                                            \
            const int64_t rows = n - r0 < c ? n - r0 : c;                                  \
            T *hc = keep ? h + r0 * k * q : h;                                             \
            if (BLOCK_BMM(x + r0 * x_r, p * x_c, x_r, x_c, rt, q, rt_c, hc, rows * q, q, k, \
                          rows, q, p, 0, threads)                                          \
                || INTERLEAVED_BMM(hc, q, rows * q, lt, q, k * q, y + r0 * y_r, y_r, q, q,  \
                                   rows, s, k, 0, threads))                                \
                return 1;                                                                  \
        }                                                                                  \
        return 0;                                                                          \
    }

DEFINE_MONARCH_ROWS(neuralnum_monarch_rows_f32, float, neuralnum_block_bmm_f32,
                    neuralnum_interleaved_bmm_f32)
DEFINE_MONARCH_ROWS(neuralnum_monarch_rows_f64, double, neuralnum_block_bmm_f64,
                    neuralnum_interleaved_bmm_f64)
