"""torch_gpu_adm.py: PyTorch's side of tests/bench/gpu_adm.lua, on the same GPU.

The same networks (torch_adm.py's twin of guided-diffusion's UNetModel, same
configs), the same work and the same BENCH keys: one training step of the real
64x64 ADM at batch 32 (forward, backward, fused AdamW) in f32 and under bf16
autocast (torch.autocast, PyTorch eager with AMP), and 50-step respaced
ancestral sampling of the tiny and the 64x64 ADM. It also counts the model's
FLOPs per image (torch.utils.flop_counter on one forward) and writes them to
$ADM_FLOPS_FILE for gpu_adm.lua's MFU; its own MFU uses the bf16 matmul rate
it measures (8192^3).
  python3 tests/bench/torch_gpu_adm.py [--quick]
Environment as gpu_adm.lua's: ADM_TRAIN_MODES, ADM_SAMPLE, ADM_SAMPLE_MODES, ADM_PROFILE_STEPS.
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_adm  # noqa: E402

QUICK = "--quick" in sys.argv
BATCH = int(os.environ.get("BATCH", "32"))
SBATCH = int(os.environ.get("SAMPLE_BATCH", "16"))
STEPS = 50
MODES = [m for m in os.environ.get("ADM_TRAIN_MODES", "f32,bf16").replace(" ", "").split(",") if m]
SAMPLE = os.environ.get("ADM_SAMPLE", "1")
SAMPLE = () if SAMPLE == "0" else ("tiny", "imagenet64") if SAMPLE == "1" else tuple(
    m for m in SAMPLE.replace(" ", "").split(",") if m)
SAMPLE_MODES = [m for m in os.environ.get("ADM_SAMPLE_MODES", "f32,bf16").replace(" ", "").split(",") if m]
PROFILE_STEPS = int(os.environ.get("ADM_PROFILE_STEPS", "0"))
dev = "cuda"
torch.backends.cuda.matmul.allow_tf32 = False     # f32 means f32, as advdiff's default
torch.backends.cudnn.allow_tf32 = False


def timed(fn, warmup=2, reps=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def emit(key, value, unit):
    print("BENCH\t%s\t%.6g\t%s" % (key, value, unit), flush=True)


print("torch_gpu_adm on", torch.cuda.get_device_name(0), "torch", torch.__version__)
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
peak = 2 * 8192 ** 3 / timed(lambda: a @ b, 3, 10)
print("  bf16 matmul 8192^3: %.0f TFLOP/s (the MFU's peak)" % (peak / 1e12))
del a, b

G = torch_adm.UNetModel(**torch_adm.CONFIGS["imagenet64"]).to(dev)
size = 64
flops = None
try:
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        G(torch.randn(1, 3, size, size, device=dev), torch.tensor([10], device=dev), torch.tensor([1], device=dev))
    flops = fc.get_total_flops()
    print("  model FLOPs per image (forward): %.1f GFLOP" % (flops / 1e9))
    if os.environ.get("ADM_FLOPS_FILE"):
        with open(os.environ["ADM_FLOPS_FILE"], "w") as f:
            f.write("%d %.6g\n" % (flops, peak))   # gpu_adm.lua takes the larger peak of the two
except ImportError:
    print("  (no torch.utils.flop_counter: no MFU)")

g = torch.Generator(device=dev).manual_seed(1)
x = torch.randn(BATCH, 3, size, size, device=dev, generator=g)
noise = torch.randn(BATCH, 3, size, size, device=dev, generator=g)
t = torch.randint(0, 1000, (BATCH,), device=dev, generator=g)
y = torch.randint(0, 1000, (BATCH,), device=dev, generator=g)
opt = torch.optim.AdamW(G.parameters(), lr=1e-4, weight_decay=0, fused=True)
G.train()
for mode in MODES:
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=(mode == "bf16")):
            out = G(x, t, y)
        loss = F.mse_loss(out[:, :3].float(), noise)
        loss.backward()
        opt.step()
    torch.cuda.reset_peak_memory_stats()
    sec = timed(step, 2, 3 if QUICK else 5)
    ips = BATCH / sec
    mem = torch.cuda.max_memory_allocated() / 2 ** 30
    line = "  ADM-64 train step %s batch %d: %.1f ms, %.1f img/s, peak %.1f GiB" % (mode, BATCH, sec * 1e3, ips, mem)
    emit("ADM64 train %s b%d" % (mode, BATCH), ips, "img/s")
    emit("ADM64 train %s peak mem" % mode, mem, "GiB")
    if flops:
        mfu = 3 * flops * ips / peak
        line += ", MFU %.1f%%" % (100 * mfu)
        emit("ADM64 train %s MFU" % mode, 100 * mfu, "%")
    print(line, flush=True)
    if PROFILE_STEPS > 0:
        print("  profiler window: ADM-64 train step %s batch %d, %d steps" % (mode, BATCH, PROFILE_STEPS), flush=True)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        for _ in range(PROFILE_STEPS):
            step()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
del G, opt
torch.cuda.empty_cache()


class Sampler(torch_adm.Sampler):
    """torch_adm's respaced sampler with its tables on the GPU."""

    def __init__(self, steps):
        super().__init__(steps)
        for k in ("timestep_map", "log_pv", "log_betas", "sqrt_recip_ac", "sqrt_recipm1_ac", "coef1", "coef2"):
            setattr(self, k, getattr(self, k).to(dev))

    @torch.no_grad()
    def loop(self, model, x, y):
        n, c = x.shape[0], x.shape[1]
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((n,), i, dtype=torch.int64, device=dev)
            out = model(x, self.timestep_map[t], y)
            eps, v = out[:, :c].float(), out[:, c:].float()
            ex = lambda a: a[t].view(n, 1, 1, 1)   # noqa: E731
            frac = (v + 1) / 2
            log_var = frac * ex(self.log_betas) + (1 - frac) * ex(self.log_pv)
            x0 = (ex(self.sqrt_recip_ac) * x - ex(self.sqrt_recipm1_ac) * eps).clamp(-1, 1)
            mean = ex(self.coef1) * x0 + ex(self.coef2) * x
            x = mean + (0.0 if i == 0 else 1.0) * torch.exp(0.5 * log_var) * torch.randn_like(x)
        return x


s = Sampler(STEPS)
for name in SAMPLE:
    cfg = dict(torch_adm.CONFIGS[name])
    if name == "tiny":
        cfg["num_classes"] = 1000
    try:
        m = torch_adm.UNetModel(**cfg).to(dev).eval()
    except TypeError:
        m = torch_adm.UNetModel(**torch_adm.CONFIGS[name]).to(dev).eval()
    sz = cfg["image_size"]
    yl = torch.randint(0, 10, (SBATCH,), device=dev)
    xT = torch.randn(SBATCH, 3, sz, sz, device=dev)
    for mode in SAMPLE_MODES:
        def loop():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=(mode == "bf16")):
                return s.loop(m, xT, yl)
        sec = timed(loop, 1, 1 if QUICK else 3)
        ips = SBATCH / sec
        print("  sample %s %s, %d steps, batch %d: %.2f s, %.2f img/s" % (name, mode, STEPS, SBATCH, sec, ips), flush=True)
        emit("sample %s %s %d steps b%d" % (name, mode, STEPS, SBATCH), ips, "img/s")
    del m
    torch.cuda.empty_cache()
