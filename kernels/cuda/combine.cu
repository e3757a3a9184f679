// Element-wise combining for collective operations, on f32, f16 and bf16 buffers:
// combine_<op>_<type>(acc, incoming, n, incoming_first) sets acc[i] to acc[i] op incoming[i]
// (incoming[i] op acc[i] when incoming_first is nonzero), and divide_<type>(values, n, d)
// divides each value by d (the last step of a mean).
//
// The CPU reference is src/reference/combine.rs, and the results are the same bits:
// - each f32 result is one IEEE operation rounded to nearest (__fadd_rn, __fmul_rn,
//   __fdiv_rn: never contracted or reordered);
// - f16 and bf16 are widened to f32 (exactly), combined with that one f32 operation and
//   rounded once to nearest-even, as the `half` crate does on the CPU;
// - min and max compare the widened values and return one operand's bits untouched: the
//   first unless the second is smaller (larger), so a NaN first stays;
// - NaN payloads are the one difference: a GPU's arithmetic returns its canonical NaN.
// Grid-stride loops (grid_stride.cuh).

__device__ __forceinline__ float ember_f32_load(float x) { return x; }
__device__ __forceinline__ float ember_f32_store(float x) { return x; }

__device__ __forceinline__ float ember_f16_load(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short ember_f16_store(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float ember_bf16_load(unsigned short b) {
    return __uint_as_float(((unsigned int)b) << 16);
}

// Rounds to nearest, ties to even, in integer arithmetic (cvt.rn.bf16.f32 needs sm_80); a
// NaN keeps its top bits and is quieted, as `half::bf16::from_f32` does.
__device__ __forceinline__ unsigned short ember_bf16_store(float f) {
    const unsigned int x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((x >> 16) | 0x0040u);
    }
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

#define EMBER_SUM(TY, a, b) ember_##TY##_store(__fadd_rn(ember_##TY##_load(a), ember_##TY##_load(b)))
#define EMBER_PRODUCT(TY, a, b) ember_##TY##_store(__fmul_rn(ember_##TY##_load(a), ember_##TY##_load(b)))
#define EMBER_MIN(TY, a, b) ((ember_##TY##_load(b) < ember_##TY##_load(a)) ? (b) : (a))
#define EMBER_MAX(TY, a, b) ((ember_##TY##_load(b) > ember_##TY##_load(a)) ? (b) : (a))

#define EMBER_COMBINE(OP, op, TY, T)                                                        \
    extern "C" __global__ void combine_##op##_##TY(T *acc, const T *incoming, unsigned int n, \
                                                   int incoming_first) {                      \
        if (incoming_first) {                                                                 \
            EMBER_GRID_STRIDE_LOOP(i, n) { acc[i] = OP(TY, incoming[i], acc[i]); }          \
        } else {                                                                              \
            EMBER_GRID_STRIDE_LOOP(i, n) { acc[i] = OP(TY, acc[i], incoming[i]); }          \
        }                                                                                     \
    }

#define EMBER_COMBINE_ALL(TY, T)                                                     \
    EMBER_COMBINE(EMBER_SUM, sum, TY, T)                                             \
    EMBER_COMBINE(EMBER_PRODUCT, product, TY, T)                                     \
    EMBER_COMBINE(EMBER_MIN, min, TY, T)                                             \
    EMBER_COMBINE(EMBER_MAX, max, TY, T)                                             \
    extern "C" __global__ void divide_##TY(T *values, unsigned int n, float divisor) { \
        EMBER_GRID_STRIDE_LOOP(i, n) {                                               \
            values[i] = ember_##TY##_store(__fdiv_rn(ember_##TY##_load(values[i]), divisor)); \
        }                                                                            \
    }

EMBER_COMBINE_ALL(f32, float)
EMBER_COMBINE_ALL(f16, unsigned short)
EMBER_COMBINE_ALL(bf16, unsigned short)
