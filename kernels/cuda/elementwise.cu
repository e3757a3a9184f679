// Element-wise kernels over f32: axpy, add, mul, scale.
//
// Each element is one IEEE operation with round-to-nearest (`fmaf`, `__fadd_rn`,
// `__fmul_rn`: the compiler may not contract or reorder them), so the results equal the CPU
// references in `src/reference/` bit for bit. Grid-stride loops (grid_stride.cuh).

// y <- a * x + y
extern "C" __global__ void axpy_f32(float a, const float *x, float *y, unsigned int n) {
    EMBER_GRID_STRIDE_LOOP(i, n) { y[i] = fmaf(a, x[i], y[i]); }
}

// out <- x + y
extern "C" __global__ void add_f32(const float *x, const float *y, float *out, unsigned int n) {
    EMBER_GRID_STRIDE_LOOP(i, n) { out[i] = __fadd_rn(x[i], y[i]); }
}

// out <- x * y
extern "C" __global__ void mul_f32(const float *x, const float *y, float *out, unsigned int n) {
    EMBER_GRID_STRIDE_LOOP(i, n) { out[i] = __fmul_rn(x[i], y[i]); }
}

// out <- a * x
extern "C" __global__ void scale_f32(float a, const float *x, float *out, unsigned int n) {
    EMBER_GRID_STRIDE_LOOP(i, n) { out[i] = __fmul_rn(a, x[i]); }
}
