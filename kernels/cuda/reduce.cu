// Fixed-order reductions over f32 (the order is documented in src/reference/reduce.rs).
//
// Launch with 256 threads per block and ceil(n / 4096) blocks (one block when n == 0); each
// block writes the partial of its 4096-element chunk to partials[blockIdx.x]. The host runs
// the kernel again over the partials until one value is left. `divisor` divides the block's
// result (1.0 for every pass but the last of a mean, which passes n), one IEEE division.

#define EMBER_REDUCE_ITEMS_PER_THREAD 16

template <bool IS_MAX>
__device__ __forceinline__ void ember_reduce_chunk(const float *x, float *partials,
                                                   unsigned int n, float divisor) {
    __shared__ float s[EMBER_BLOCK_THREADS];
    const unsigned int t = threadIdx.x;
    const unsigned long long base =
        (unsigned long long)blockIdx.x * EMBER_BLOCK_THREADS * EMBER_REDUCE_ITEMS_PER_THREAD;
    float acc = IS_MAX ? ember_max_identity() : 0.0f;
#pragma unroll
    for (unsigned int i = 0; i < EMBER_REDUCE_ITEMS_PER_THREAD; ++i) {
        const unsigned long long index = base + (unsigned long long)i * EMBER_BLOCK_THREADS + t;
        if (index < n) {
            acc = IS_MAX ? ember_max(acc, x[index]) : __fadd_rn(acc, x[index]);
        }
    }
    s[t] = acc;
    const float block = ember_block_tree<IS_MAX>(s);
    if (t == 0) {
        partials[blockIdx.x] = IS_MAX ? block : __fdiv_rn(block, divisor);
    }
}

extern "C" __global__ void reduce_sum_f32(const float *x, float *partials, unsigned int n,
                                          float divisor) {
    ember_reduce_chunk<false>(x, partials, n, divisor);
}

extern "C" __global__ void reduce_max_f32(const float *x, float *partials, unsigned int n) {
    ember_reduce_chunk<true>(x, partials, n, 1.0f);
}
