/* What the product kernels share: the vector types they compute in (sized to the CPU the
 * library is built for, -march=native), and the agreement of an OpenMP team on whether
 * every thread got its packing buffers. */
#ifndef NEURALNUM_NATIVE_COMMON_H
#define NEURALNUM_NATIVE_COMMON_H

#include <stdint.h>

/* One vector register, and how many of them the register tiles may hold (accumulators plus
 * the operands of one step) without spilling. */
#if defined(__AVX512F__)
#define VECTOR_BYTES 64 /* 16 floats or 8 doubles: one cache line */
#define WIDE_REGISTER_FILE 1 /* 32 registers */
#elif defined(__AVX__)
#define VECTOR_BYTES 32
#define WIDE_REGISTER_FILE 0 /* 16 registers */
#else
#define VECTOR_BYTES 16 /* SSE2, NEON */
#define WIDE_REGISTER_FILE 0
#endif

/* Keeps a loaded vector in a register (GCC would otherwise fold its load into every fused
 * multiply-add that uses it); x86 only, elsewhere a no-op. */
#if defined(__x86_64__) || defined(__i386__)
#define IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define IN_REGISTER(v) ((void)0)
#endif

typedef float f32_vec __attribute__((vector_size(VECTOR_BYTES), aligned(4)));
typedef double f64_vec __attribute__((vector_size(VECTOR_BYTES), aligned(8)));

#define MIN(x, y) ((x) < (y) ? (x) : (y))
#define MAX(x, y) ((x) > (y) ? (x) : (y))

/* Called by every thread of a parallel region (it holds a barrier): whether every thread
 * passed allocated = 1. `failures` is shared by the team and starts at 0; every thread
 * gets the same answer, so all of them take the same branch after it (a work-sharing loop
 * must be met by all threads or none). */
static inline int all_allocated(int allocated, int *failures) {
    if (!allocated) {
        _Pragma("omp atomic")
        ++*failures;
    }
    _Pragma("omp barrier")
    int any;
    _Pragma("omp atomic read")
    any = *failures;
    return any == 0;
}

#endif
