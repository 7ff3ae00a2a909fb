/* Out-of-place 2-D transpose for float32 and float64: dst[j*ldd + i] = src[i*lds + j]
 * for 0 <= i < rows, 0 <= j < cols (both matrices row-major with leading dimensions
 * lds >= cols and ldd >= rows). Compiled and loaded by kernels/native.py.
 *
 * torch's strided copy moves one element at a time (about 10x memcpy's time per MiB);
 * this one moves 8x8 (float) or 4x4 (double) tiles through AVX registers, visiting the
 * source in panels of TILE_ROWS rows x PANEL_COLS columns so that every cache line read
 * is used whole while it is in L1. Without AVX the tiles are moved by scalar code. Columns
 * are split over threads with OpenMP when threads > 1.
 */
#include <stdint.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

#define PANEL_COLS 64

#ifdef __AVX__
static inline void tile_f32(const float *s, int64_t lds, float *d, int64_t ldd) {
    __m256 r0 = _mm256_loadu_ps(s + 0 * lds), r1 = _mm256_loadu_ps(s + 1 * lds);
    __m256 r2 = _mm256_loadu_ps(s + 2 * lds), r3 = _mm256_loadu_ps(s + 3 * lds);
    __m256 r4 = _mm256_loadu_ps(s + 4 * lds), r5 = _mm256_loadu_ps(s + 5 * lds);
    __m256 r6 = _mm256_loadu_ps(s + 6 * lds), r7 = _mm256_loadu_ps(s + 7 * lds);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(d + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

static inline void tile_f64(const double *s, int64_t lds, double *d, int64_t ldd) {
    __m256d r0 = _mm256_loadu_pd(s + 0 * lds), r1 = _mm256_loadu_pd(s + 1 * lds);
    __m256d r2 = _mm256_loadu_pd(s + 2 * lds), r3 = _mm256_loadu_pd(s + 3 * lds);
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(d + 0 * ldd, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(d + 1 * ldd, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(d + 2 * ldd, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(d + 3 * ldd, _mm256_permute2f128_pd(t1, t3, 0x31));
}
#define TILE_F32 8
#define TILE_F64 4
#else
#define TILE_F32 8
#define TILE_F64 8
static inline void tile_f32(const float *s, int64_t lds, float *d, int64_t ldd) {
    for (int i = 0; i < TILE_F32; ++i)
        for (int j = 0; j < TILE_F32; ++j) d[j * ldd + i] = s[i * lds + j];
}

static inline void tile_f64(const double *s, int64_t lds, double *d, int64_t ldd) {
    for (int i = 0; i < TILE_F64; ++i)
        for (int j = 0; j < TILE_F64; ++j) d[j * ldd + i] = s[i * lds + j];
}
#endif

/* One transpose per element type: full tiles in panels, then the ragged edges. */
#define DEFINE_TRANSPOSE(NAME, T, TILE, TILE_FN)                                         \
    void NAME(const T *src, int64_t lds, T *dst, int64_t ldd, int64_t rows, int64_t cols, \
              int threads) {                                                             \
        const int64_t full_rows = rows - rows % TILE, full_cols = cols - cols % TILE;    \
        const int64_t panels = (full_cols + PANEL_COLS - 1) / PANEL_COLS;                \
        _Pragma("omp parallel for num_threads(threads) if(threads > 1) schedule(static)") \
        for (int64_t panel = 0; panel < panels; ++panel) {                              \
            const int64_t j0 = panel * PANEL_COLS;                                       \
            const int64_t j1 = j0 + PANEL_COLS < full_cols ? j0 + PANEL_COLS : full_cols; \
            for (int64_t i = 0; i < full_rows; i += TILE)                                \
                for (int64_t j = j0; j < j1; j += TILE)                                  \
                    TILE_FN(src + i * lds + j, lds, dst + j * ldd + i, ldd);             \
        }                                                                                \
        for (int64_t i = full_rows; i < rows; ++i)         /* last rows, every column */ \
            for (int64_t j = 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];      \
        for (int64_t i = 0; i < full_rows; ++i)            /* last columns */            \
            for (int64_t j = full_cols; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j]; \
    }

DEFINE_TRANSPOSE(neuralnum_transpose_f32, float, TILE_F32, tile_f32)
DEFINE_TRANSPOSE(neuralnum_transpose_f64, double, TILE_F64, tile_f64)
