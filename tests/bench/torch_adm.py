"""torch_adm.py: the PyTorch twin of advdiff's ADM benchmark (bench_adm.lua).

A compact PyTorch definition of guided-diffusion's UNetModel (unet.py), for
timing only: the same modules, the same state-dict names and shapes, the same
arithmetic (einsum attention with the sqrt(sqrt(ch)) split scale, GroupNorm(32),
sinusoidal embedding in f32), restricted to what the benchmark's two configs
use (f32, no gradient checkpointing). Plus a compact respaced Gaussian
diffusion sampler (p_sample with learned-range sigma, as guided-diffusion's
SpacedDiffusion), schedules computed in float64 and gathered as float32.

The twin proves itself before it is timed (`selftest`): the fixture's adm_tiny
weights and inputs must give the fixture's guided-diffusion output, and the
sampler must reproduce the fixture's respaced p_sample_loop.

Usage (run_adm.sh drives it):
  torch_adm.py selftest FIXTURES_DIR
  torch_adm.py prepare DIR CONFIG             weights DIR/CONFIG.pt, inputs + outputs DIR/CONFIG_check.pt
  torch_adm.py bench DIR CONFIG MODE BATCH REPS [STEPS]
      MODE fwd_fwdbwd: forward (eval, no_grad) and forward+backward (train mode)
      MODE sample: STEPS-step respaced p_sample_loop, images/s
Threads: the THREADS environment variable (default 2), torch.set_num_threads.
Output: "RESULT <key> <value>" lines, the same keys as bench_adm.lua.
"""
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

THREADS = int(os.environ.get("THREADS", "2"))
torch.set_num_threads(THREADS)

# the two benchmark configurations, as create_model's options
CONFIGS = {
    # the fixture's adm_tiny: every feature of the ImageNet-64 model, small
    "tiny": dict(image_size=32, num_channels=32, num_res_blocks=2, channel_mult=(1, 2, 2),
                 attention_resolutions=(16, 8), num_heads=4, num_head_channels=16, learn_sigma=True,
                 class_cond=True, use_scale_shift_norm=True, resblock_updown=True,
                 use_new_attention_order=True, dropout=0.0),
    # ad.models.adm.config("imagenet64"): the paper's generator (64x64_diffusion.pt)
    "imagenet64": dict(image_size=64, num_channels=192, num_res_blocks=3, channel_mult=(1, 2, 3, 4),
                       attention_resolutions=(32, 16, 8), num_heads=4, num_head_channels=64,
                       learn_sigma=True, class_cond=True, use_scale_shift_norm=True, resblock_updown=True,
                       use_new_attention_order=True, dropout=0.1),
}


# ---------------------------------------------------------------- the U-Net

def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_(m):
    for p in m.parameters():
        p.detach().zero_()
    return m


class EmbSequential(nn.Sequential):
    """guided-diffusion's TimestepEmbedSequential: ResBlocks also get emb."""

    def forward(self, x, emb):
        for m in self:
            x = m(x, emb) if isinstance(m, ResBlock) else m(x)
        return x


class Upsample(nn.Module):
    def __init__(self, ch, use_conv):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, ch, use_conv):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, dropout, out_ch=None, up=False, down=False, scale_shift=True):
        super().__init__()
        out_ch = out_ch or ch
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(ch, False), Upsample(ch, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(ch, False), Downsample(ch, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out_ch), nn.SiLU(), nn.Dropout(dropout),
                                        zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for m in self.out_layers[1:]:
                h = m(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch, num_heads, num_head_channels, new_order):
        super().__init__()
        self.heads = num_heads if num_head_channels == -1 else ch // num_head_channels
        self.new_order = new_order
        self.norm = nn.GroupNorm(32, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = zero_(nn.Conv1d(ch, ch, 1))

    def forward(self, x):
        b, c = x.shape[:2]
        xf = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(xf))
        L, H = qkv.shape[2], self.heads
        ch = c // H
        if self.new_order:   # QKVAttention: split q, k, v, then heads
            q, k, v = (z.reshape(b * H, ch, L) for z in qkv.chunk(3, dim=1))
        else:                # QKVAttentionLegacy: split heads, then q, k, v
            q, k, v = qkv.reshape(b * H, 3 * ch, L).split(ch, dim=1)
        s = 1 / math.sqrt(math.sqrt(ch))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, L)
        return (xf + self.proj_out(a)).reshape(x.shape)


class UNetModel(nn.Module):
    def __init__(self, image_size, num_channels, num_res_blocks, channel_mult, attention_resolutions,
                 num_heads, num_head_channels, learn_sigma, class_cond, use_scale_shift_norm,
                 resblock_updown, use_new_attention_order, dropout, in_channels=3, num_classes=1000):
        super().__init__()
        mc = num_channels
        ted = 4 * mc
        self.mc = mc
        attn_ds = {image_size // r for r in attention_resolutions}

        def res(ch, out=None, **kw):
            return ResBlock(ch, ted, dropout, out, scale_shift=use_scale_shift_norm, **kw)

        def attn(ch):
            return AttentionBlock(ch, num_heads, num_head_channels, use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if class_cond:
            self.label_emb = nn.Embedding(num_classes, ted)
        self.input_blocks = nn.ModuleList([EmbSequential(nn.Conv2d(in_channels, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(EmbSequential(res(ch, down=True) if resblock_updown
                                                       else Downsample(ch, True)))
                chans.append(ch)
                ds *= 2
        self.middle_block = EmbSequential(res(ch), attn(ch), res(ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in attn_ds:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, up=True) if resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(EmbSequential(*layers))
        out_ch = 2 * in_channels if learn_sigma else in_channels
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), zero_(nn.Conv2d(mc, out_ch, 3, padding=1)))

    def forward(self, x, t, y=None):
        emb = self.time_embed(timestep_embedding(t, self.mc).to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def build(config, seed=0):
    """The config's model with seeded random weights; every parameter gets
    0.02*randn added so the zero-initialised convs are live (as the fixture)."""
    torch.manual_seed(seed)
    m = UNetModel(**CONFIGS[config])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return m


# ---------------------------------------------------------------- the sampler

def betas_for(schedule, T=1000):
    if schedule == "linear":
        s = 1000 / T
        return np.linspace(s * 0.0001, s * 0.02, T, dtype=np.float64)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2   # noqa: E731
    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=np.float64)


def space_timesteps(T, count):
    """guided-diffusion's space_timesteps for a single section count."""
    if count == 1:
        return [0]
    stride = (T - 1) / (count - 1)
    return sorted({round(i * stride) for i in range(count)})


class Sampler:
    """SpacedDiffusion with learned-range sigma, eps prediction, clip_denoised."""

    def __init__(self, steps, schedule="cosine", T=1000):
        ac_full = np.cumprod(1.0 - betas_for(schedule, T))
        use = space_timesteps(T, steps)
        betas, last = [], 1.0
        for i in use:
            betas.append(1 - ac_full[i] / last)
            last = ac_full[i]
        b = np.array(betas, dtype=np.float64)
        ac = np.cumprod(1.0 - b)
        ac_prev = np.append(1.0, ac[:-1])
        pv = b * (1 - ac_prev) / (1 - ac)
        f32 = lambda a: torch.from_numpy(np.asarray(a)).float()   # noqa: E731  (_extract's .float())
        self.timestep_map = torch.tensor(use, dtype=torch.int64)
        self.num_timesteps = len(use)
        self.log_pv = f32(np.log(np.append(pv[1], pv[1:])))
        self.log_betas = f32(np.log(b))
        self.sqrt_recip_ac = f32(np.sqrt(1.0 / ac))
        self.sqrt_recipm1_ac = f32(np.sqrt(1.0 / ac - 1))
        self.coef1 = f32(b * np.sqrt(ac_prev) / (1 - ac))
        self.coef2 = f32((1 - ac_prev) * np.sqrt(1 - b) / (1 - ac))

    @torch.no_grad()
    def p_sample_loop(self, model, x, y, noise_fn=torch.randn_like, start=None):
        """Steps t = start-1 .. 0 (default: all of them, from pure noise x)."""
        n = x.shape[0]
        for i in reversed(range(self.num_timesteps if start is None else start)):
            t = torch.full((n,), i, dtype=torch.int64)
            out = model(x, self.timestep_map[t], y)
            c = x.shape[1]
            eps, v = out[:, :c], out[:, c:]
            ex = lambda a: a[t].view(n, 1, 1, 1)   # noqa: E731
            frac = (v + 1) / 2
            log_var = frac * ex(self.log_betas) + (1 - frac) * ex(self.log_pv)
            x0 = (ex(self.sqrt_recip_ac) * x - ex(self.sqrt_recipm1_ac) * eps).clamp(-1, 1)
            mean = ex(self.coef1) * x0 + ex(self.coef2) * x
            noise = noise_fn(x)
            x = mean + (0.0 if i == 0 else 1.0) * torch.exp(0.5 * log_var) * noise
        return x


# ---------------------------------------------------------------- helpers

def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def npy(path):
    return torch.from_numpy(np.load(path))


def selftest(fix):
    m = UNetModel(**CONFIGS["tiny"]).eval()
    m.load_state_dict(torch.load(os.path.join(fix, "adm_tiny", "adm_tiny.pt")))
    d = os.path.join(fix, "adm_tiny")
    with torch.no_grad():
        out = m(npy(d + "/x.npy"), npy(d + "/t.npy"), npy(d + "/y.npy"))
    e = rel_err(out, npy(d + "/output.npy"))
    print("twin vs guided-diffusion (fixture adm_tiny output): max|diff|/max|ref| = %.3g" % e)
    if not e <= 1e-5:
        sys.exit("torch_adm.py: the PyTorch twin does not reproduce the fixture's output")
    d = os.path.join(fix, "diffusion")
    noise = iter(npy(d + "/loop_step_noise.npy"))
    s = Sampler(10, "cosine").p_sample_loop(m, npy(d + "/loop_x_T.npy"), npy(d + "/loop_y.npy"),
                                            lambda x: next(noise))
    e = (s - npy(d + "/loop_final.npy")).abs().max().item()
    print("twin sampler vs guided-diffusion (fixture p_sample_loop, 10 steps): max|diff| = %.3g" % e)
    if not e <= 2e-4:
        sys.exit("torch_adm.py: the PyTorch sampler does not reproduce the fixture's p_sample_loop")


def check_inputs(config, n, seed=7):
    c = CONFIGS[config]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, c["image_size"], c["image_size"], generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, 1000, (n,), generator=g)
    return x, t, y


# the sampling check: the whole 50-step loop for tiny; for imagenet64 (50
# forwards at 64x64 would take minutes) its last 3 steps from x_T. Its first
# steps are ill-conditioned in float32: at t=999 pred_xstart = clip(1/sqrt(abar)
# * (x - sqrt(1-abar) eps)) with 1/sqrt(abar) ~ 1e4, so a pixel near the clip
# switch can flip on a rounding difference (float32 vs float64 in PyTorch
# alone moved a 3-step sample by 0.03).
SAMPLE_CHECK = {"tiny": (50, 50), "imagenet64": (50, 3)}   # (respaced steps, steps run)


def prepare(d, config):
    m = build(config).eval()
    torch.save(m.state_dict(), os.path.join(d, config + ".pt"))
    x, t, y = check_inputs(config, 2)
    with torch.no_grad():
        out = m(x, t, y)
    # a short sampling run with injected noise: the Lua side must reproduce it
    steps, start = SAMPLE_CHECK[config]
    g = torch.Generator().manual_seed(11)
    x_T = torch.randn(x.shape, generator=g)
    step_noise = torch.randn((start,) + tuple(x.shape), generator=g)
    it = iter(step_noise)
    sample = Sampler(steps).p_sample_loop(m, x_T, y, lambda z: next(it), start)
    torch.save({"x": x, "t": t, "y": y, "output": out, "x_T": x_T, "step_noise": step_noise,
                "sample": sample, "sample_steps": torch.tensor([steps]), "sample_start": torch.tensor([start])},
               os.path.join(d, config + "_check.pt"))
    print("prepared %s: %d parameters, weights %s" % (config, sum(p.numel() for p in m.parameters()),
                                                       os.path.join(d, config + ".pt")))


# ---------------------------------------------------------------- timing

def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss():
    """Restart the kernel's peak-RSS counter (VmHWM) from the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def timed(fn, reps):
    """fn once to warm up, then reps calls: best wall and best CPU seconds per call."""
    fn()
    best_w = best_c = float("inf")
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best_w = min(best_w, time.perf_counter() - w0)
        best_c = min(best_c, time.process_time() - c0)
    return best_w, best_c


def bench(d, config, mode, n, reps, steps):
    m = UNetModel(**CONFIGS[config])
    m.load_state_dict(torch.load(os.path.join(d, config + ".pt")))
    x, t, y = check_inputs(config, n, seed=100 + n)
    tag = "%s_b%d" % (config, n)
    if mode == "fwd_fwdbwd":
        m.eval()

        def fwd():
            with torch.no_grad():
                m(x, t, y)
        reset_peak_rss()
        rss0 = status_kb("VmRSS")
        w, c = timed(fwd, reps)
        print("RESULT %s_fwd_ms %.3f" % (tag, w * 1e3))
        print("RESULT %s_fwd_cpums %.3f" % (tag, c * 1e3))
        print("RESULT %s_fwd_rss_mb %.1f" % (tag, status_kb("VmHWM") / 1024))
        print("RESULT %s_fwd_rssgrow_mb %.1f" % (tag, (status_kb("VmHWM") - rss0) / 1024))
        m.train()   # the training case: dropout live (imagenet64 has 0.1)
        r = torch.randn((n,) + tuple(m.out[2].weight.shape[:1]) + tuple(x.shape[2:]),
                        generator=torch.Generator().manual_seed(5))

        def fwdbwd():
            m.zero_grad(set_to_none=True)
            (m(x, t, y) * r).sum().backward()
        reset_peak_rss()
        rss0 = status_kb("VmRSS")
        w, c = timed(fwdbwd, reps)
        print("RESULT %s_fwdbwd_ms %.3f" % (tag, w * 1e3))
        print("RESULT %s_fwdbwd_cpums %.3f" % (tag, c * 1e3))
        print("RESULT %s_fwdbwd_rss_mb %.1f" % (tag, status_kb("VmHWM") / 1024))
        print("RESULT %s_fwdbwd_rssgrow_mb %.1f" % (tag, (status_kb("VmHWM") - rss0) / 1024))
    elif mode == "sample":
        m.eval()
        s = Sampler(steps)
        w0 = time.perf_counter()
        s.p_sample_loop(m, torch.randn_like(x), y)
        w = time.perf_counter() - w0
        print("RESULT %s_sample%d_img_s %.4f" % (tag, steps, n / w))
        print("RESULT %s_sample_rss_mb %.1f" % (tag, status_kb("VmHWM") / 1024))
    else:
        sys.exit("torch_adm.py: unknown mode " + mode)


def main(argv):
    if len(argv) >= 2 and argv[0] == "selftest":
        selftest(argv[1])
    elif len(argv) >= 3 and argv[0] == "prepare":
        prepare(argv[1], argv[2])
    elif len(argv) >= 6 and argv[0] == "bench":
        bench(argv[1], argv[2], argv[3], int(argv[4]), int(argv[5]), int(argv[6]) if len(argv) > 6 else 50)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
