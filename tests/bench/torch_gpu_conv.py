"""torch_gpu_conv.py: PyTorch's conv2d forward and forward+backward on the ADM
shapes of gpu_conv.lua (batch 32, 3x3, 192/384/576/768 channels at
64/32/16/8 px), f32 without TF32, TF32 and bf16, cudnn.benchmark on, timed
with CUDA events; BENCH lines for tests/gpu/run.sh.
Usage: python3 torch_gpu_conv.py [--quick]"""
import sys
import torch
import torch.nn.functional as F

N = 32
SHAPES = [(192, 64), (384, 32), (576, 16), (768, 8)]
MODES = [("f32", torch.float32), ("tf32", torch.float32), ("bf16", torch.bfloat16)]


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
    torch.backends.cudnn.benchmark = True
    print("torch %s (cuDNN %s) on %s" % (torch.__version__, torch.backends.cudnn.version(),
                                          torch.cuda.get_device_name(0)))
    g = torch.Generator(device="cuda").manual_seed(0)
    for C, H in SHAPES:
        for name, dt in MODES:
            if quick and name == "tf32":
                continue
            torch.backends.cudnn.allow_tf32 = name == "tf32"
            x = torch.randn(N, C, H, H, device="cuda", dtype=dt, generator=g)
            w = (torch.randn(C, C, 3, 3, device="cuda", dtype=dt, generator=g) * 0.05)
            gy = torch.randn(N, C, H, H, device="cuda", dtype=dt, generator=g)
            flops = 2 * N * C * C * 9 * H * H
            with torch.no_grad():
                tf = bench(lambda: F.conv2d(x, w, padding=1))
            x.requires_grad_(True)
            w.requires_grad_(True)

            def step():
                x.grad = None
                w.grad = None
                F.conv2d(x, w, padding=1).backward(gy)
            tb = bench(step)
            print("  conv2d %-4s C=%-4d %3dpx  fwd %7.3f ms %6.1f TFLOP/s   fwd+bwd %7.3f ms %6.1f TFLOP/s"
                  % (name, C, H, tf * 1e3, flops / tf / 1e12, tb * 1e3, 3 * flops / tb / 1e12))
            print("BENCH\tconv2d fwd %s C=%d %dpx\t%.6g\tms" % (name, C, H, tf * 1e3))
            print("BENCH\tconv2d fwd+bwd %s C=%d %dpx\t%.6g\tms" % (name, C, H, tb * 1e3))
    torch.backends.cudnn.allow_tf32 = True


if __name__ == "__main__":
    main()
