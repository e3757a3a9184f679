// Shared by elementwise.cu and combine.cu (prepended to each by the crate, as NVRTC is given
// no include path): a grid-stride loop, so any grid covers any `n`.

#define EMBER_GRID_STRIDE_LOOP(i, n)                                              \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (unsigned long long)(n);                                             \
         i += (unsigned long long)blockDim.x * gridDim.x)
