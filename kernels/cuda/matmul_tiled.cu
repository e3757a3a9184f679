// Hand-written shared-memory tiled f32 matmul, kept to compare with cuBLAS.
//
// Row-major C[m x n] = A[m x k] . B[k x n]. Launch with (16, 16) threads per block and a
// (ceil(n / 16), ceil(m / 16)) grid. Each C element is accumulated over increasing p with
// fmaf from 0.0f, the order of the CPU reference, and the inner loop stops at k (no padded
// terms), so the result equals the reference bit for bit.

#define EMBER_TILE 16

extern "C" __global__ void matmul_tiled_f32(const float *a, const float *b, float *c,
                                            unsigned int m, unsigned int k, unsigned int n) {
    __shared__ float a_tile[EMBER_TILE][EMBER_TILE];
    __shared__ float b_tile[EMBER_TILE][EMBER_TILE + 1];
    const unsigned int tx = threadIdx.x;
    const unsigned int ty = threadIdx.y;
    const unsigned long long row = (unsigned long long)blockIdx.y * EMBER_TILE + ty;
    const unsigned long long col = (unsigned long long)blockIdx.x * EMBER_TILE + tx;
    float acc = 0.0f;
    for (unsigned int p0 = 0; p0 < k; p0 += EMBER_TILE) {
        a_tile[ty][tx] = (row < m && p0 + tx < k) ? a[row * k + p0 + tx] : 0.0f;
        b_tile[ty][tx] = (p0 + ty < k && col < n) ? b[(unsigned long long)(p0 + ty) * n + col] : 0.0f;
        __syncthreads();
        const unsigned int depth = (k - p0 < EMBER_TILE) ? (k - p0) : EMBER_TILE;
        if (depth == EMBER_TILE) {
#pragma unroll
            for (unsigned int p = 0; p < EMBER_TILE; ++p) {
                acc = fmaf(a_tile[ty][p], b_tile[p][tx], acc);
            }
        } else {
            for (unsigned int p = 0; p < depth; ++p) {
                acc = fmaf(a_tile[ty][p], b_tile[p][tx], acc);
            }
        }
        __syncthreads();
    }
    if (row < m && col < n) {
        c[row * n + col] = acc;
    }
}
