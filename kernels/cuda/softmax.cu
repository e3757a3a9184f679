// Row-wise softmax over a row-major [rows, cols] f32 matrix: one 256-thread block per row
// (grid-stride over rows). The row max and the sum of exponentials run in the fixed block
// order of src/reference/softmax.rs; `expf` is CUDA's accurate one (no fast math).

extern "C" __global__ void softmax_f32(const float *x, float *y, unsigned int rows,
                                       unsigned int cols) {
    __shared__ float s[EMBER_BLOCK_THREADS];
    const unsigned int t = threadIdx.x;
    for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const float *x_row = x + row * cols;
        float *y_row = y + row * cols;

        float row_max = ember_max_identity();
        for (unsigned int c = t; c < cols; c += EMBER_BLOCK_THREADS) {
            row_max = ember_max(row_max, x_row[c]);
        }
        s[t] = row_max;
        row_max = ember_block_tree<true>(s);

        float total = 0.0f;
        for (unsigned int c = t; c < cols; c += EMBER_BLOCK_THREADS) {
            const float e = expf(__fsub_rn(x_row[c], row_max));
            y_row[c] = e;
            total = __fadd_rn(total, e);
        }
        s[t] = total;
        total = ember_block_tree<false>(s);

        for (unsigned int c = t; c < cols; c += EMBER_BLOCK_THREADS) {
            y_row[c] = __fdiv_rn(y_row[c], total);
        }
    }
}
