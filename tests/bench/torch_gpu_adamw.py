"""torch_gpu_adamw.py: PyTorch's fused AdamW (torch.optim.AdamW(fused=True)) over
the parameters of gpu_adamw.lua (300 tensors of 1M f32), in GB/s of the 28
bytes per parameter it must move; BENCH lines for tests/gpu/run.sh."""
import sys
import torch

T = 60 if "--quick" in sys.argv else 300
PER = 1000000


def main():
    print("torch %s on %s" % (torch.__version__, torch.cuda.get_device_name(0)))
    g = torch.Generator(device="cuda").manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(PER, device="cuda", generator=g)) for _ in range(T)]
    for p in ps:
        p.grad = torch.randn(PER, device="cuda", generator=g)
    opt = torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, fused=True)
    for _ in range(3):
        opt.step()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        s.record()
        for _ in range(10):
            opt.step()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3 / 10)
    times.sort()
    t = times[len(times) // 2]
    n = T * PER
    gbs = 28 * n / t / 1e9
    print("  torch fused adamw f32, %d tensors, %.0fM params: %.3f ms, %.0f GB/s" % (T, n / 1e6, t * 1e3, gbs))
    print("BENCH\tadamw f32 %dM params\t%.6g\tGB/s" % (n // 1000000, gbs))


if __name__ == "__main__":
    main()
