// Shared by reduce.cu and softmax.cu (prepended to each by the crate, as NVRTC is given no
// include path): the fixed combining operations and the fixed pairwise tree over the 256
// per-thread values of one block. The order is documented in src/reference/reduce.rs.

#define EMBER_BLOCK_THREADS 256

// NaN-ignoring max that keeps the first operand on ties; it only ever selects an operand.
__device__ __forceinline__ float ember_max(float a, float b) {
    return (a != a) ? b : ((b != b || a >= b) ? a : b);
}

// The identity of ember_max: a NaN that loses against every number.
__device__ __forceinline__ float ember_max_identity() { return __int_as_float(0x7fc00000); }

// Combines s[0..256) into s[0] with the fixed tree: for stride 128, 64, ..., 1, value t < stride
// becomes op(s[t], s[t + stride]). Every thread of the block must call it; s[0] is ready for
// all threads on return.
template <bool IS_MAX>
__device__ __forceinline__ float ember_block_tree(float *s) {
    const unsigned int t = threadIdx.x;
    __syncthreads();
    for (unsigned int stride = EMBER_BLOCK_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            s[t] = IS_MAX ? ember_max(s[t], s[t + stride]) : __fadd_rn(s[t], s[t + stride]);
        }
        __syncthreads();
    }
    const float result = s[0];
    __syncthreads();
    return result;
}
