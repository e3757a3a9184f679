"""torch.matmul's TFLOP/s on this GPU, f32 and bf16, at the sizes the GPU kit runs cuBLAS.

Usage: python3 torch_matmul.py OUT.json. Plain f32 (TF32 off, as cuBLAS's sgemm runs in
the kit) and bf16; 3 warm-up runs, then the mean of 10 timed with CUDA events.
"""

import json
import sys

import torch

SIZE = 8192
ITERS = 10


def tflops(dtype):
    a = torch.rand(SIZE, SIZE, device="cuda", dtype=torch.float32).mul_(2).sub_(1).to(dtype)
    b = torch.rand(SIZE, SIZE, device="cuda", dtype=torch.float32).mul_(2).sub_(1).to(dtype)
    for _ in range(3):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(ITERS):
        torch.matmul(a, b)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / ITERS
    return 2.0 * SIZE**3 / seconds / 1e12


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    result = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "matmul": {},
    }
    for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        value = tflops(dtype)
        result["matmul"][name] = {"m": SIZE, "k": SIZE, "n": SIZE, "tflops": value}
        print(f"torch.matmul {name} {SIZE}^3: {value:.1f} TFLOP/s")
    with open(sys.argv[1], "w") as out:
        json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
