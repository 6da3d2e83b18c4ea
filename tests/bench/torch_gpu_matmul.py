"""torch_gpu_matmul.py: the shapes of gpu_matmul.lua through torch.matmul (cuBLAS)
on the same GPU, timed with CUDA events (median of batches), printed as
BENCH lines for tests/gpu/run.sh. Usage: python3 torch_gpu_matmul.py [--quick]"""
import sys
import torch

SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (8192, 1152, 384), (32768, 768, 3072)]
MODES = [("bf16", torch.bfloat16), ("f16", torch.float16), ("f32", torch.float32), ("tf32", torch.float32)]


def bench(fn, warmup=3, batches=5, min_batch=0.05):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); fn(); e.record(); torch.cuda.synchronize()
    per = max(1, min(1000, int(min_batch / max(s.elapsed_time(e) / 1e3, 1e-6)) + 1))
    times = []
    for _ in range(batches):
        s.record()
        for _ in range(per):
            fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3 / per)
    times.sort()
    return times[len(times) // 2]


def main():
    quick = "--quick" in sys.argv
    print("torch %s on %s" % (torch.__version__, torch.cuda.get_device_name(0)))
    g = torch.Generator(device="cuda").manual_seed(0)
    for m, n, k in SHAPES:
        for name, dt in MODES:
            if quick and m * n * k > 4096 ** 3:
                continue
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
            a = torch.randn(m, k, device="cuda", dtype=dt, generator=g)
            b = torch.randn(k, n, device="cuda", dtype=dt, generator=g)
            t = bench(lambda: torch.matmul(a, b))
            tflops = 2 * m * n * k / t / 1e12
            print("  matmul %-5s %6dx%-6dx%-6d %8.3f ms  %7.1f TFLOP/s" % (name, m, n, k, t * 1e3, tflops))
            print("BENCH\tmatmul %s %dx%dx%d\t%.6g\tTFLOP/s" % (name, m, n, k, tflops))
    torch.backends.cuda.matmul.allow_tf32 = False


if __name__ == "__main__":
    main()
