-- gpu_adm.lua: the paper's generator on the GPU: one training step of the real 64x64 ADM
-- (ad.models.adm.config("imagenet64"), 296M parameters; forward, backward, fused AdamW) at
-- batch 32, in f32 and under bf16 autocast, and 50-step respaced ancestral sampling of it and
-- of the tiny ADM. Prints images/s, peak memory, and model-FLOPs utilisation against the
-- card's measured bf16 matmul rate (8192^3 through ad.matmul). The model FLOPs per image come
-- from PyTorch's FlopCounterMode on the twin (tests/bench/torch_gpu_adm.py writes them to
-- $ADM_FLOPS_FILE with its own measured bf16 rate; run it first, as tests/gpu/run.sh does); the
-- MFU's peak is the larger of the two rates; without the file MFU is not printed.
--   advdiff tests/bench/gpu_adm.lua [--quick]
-- Environment: ADM_TRAIN_MODES ("f32,bf16"), ADM_SAMPLE (1: both models; 0: no
-- sampling; or a list, "imagenet64"), ADM_SAMPLE_MODES ("f32,bf16"),
-- ADM_PROFILE_STEPS (0; N > 0 runs N more steps of each mode between
-- ad.cuda.profiler_start/stop, for tests/gpu/kprof.sh).
local ad = require "advdiff"
package.path = debug.getinfo(1, "S").source:gsub("^@", ""):gsub("[^/]*$", "") .. "?.lua;" .. package.path
local B = require "gpu_common"
local adm = require "advdiff.models.adm"

B.need_gpu("gpu_adm")
local quick = (... == "--quick")
print("gpu_adm on " .. B.device_line())
local BATCH = tonumber(os.getenv("BATCH") or "") or (B.SELFTEST and 2 or 32)
local SBATCH = tonumber(os.getenv("SAMPLE_BATCH") or "") or (B.SELFTEST and 1 or 16)
local STEPS = B.SELFTEST and 2 or 50
local MODES = {}
for m in (os.getenv("ADM_TRAIN_MODES") or "f32,bf16"):gmatch("[^,%s]+") do MODES[#MODES + 1] = m end
local function list(s)
  local t = {}
  for m in s:gmatch("[^,%s]+") do t[#t + 1] = m end
  return t
end
local SAMPLE = os.getenv("ADM_SAMPLE") or "1"
SAMPLE = SAMPLE == "0" and {} or SAMPLE == "1" and { "tiny", "imagenet64" } or list(SAMPLE)
local SAMPLE_MODES = list(os.getenv("ADM_SAMPLE_MODES") or "f32,bf16")
local PROFILE_STEPS = B.SELFTEST and 0 or tonumber(os.getenv("ADM_PROFILE_STEPS") or "") or 0

local function read_flops()
  local f = os.getenv("ADM_FLOPS_FILE") and io.open(os.getenv("ADM_FLOPS_FILE"), "r")
  if not f then return nil end
  local line = f:read("l") or ""
  f:close()
  local flops, torch_peak = line:match("^(%S+)%s*(%S*)")
  return tonumber(flops), tonumber(torch_peak)
end

-- the card's bf16 matmul rate, the MFU's denominator
local peak
if not B.SELFTEST then
  local n = 8192
  local a = ad.randn(n, n, { device = "cuda" }):to("bf16")
  local b = ad.randn(n, n, { device = "cuda" }):to("bf16")
  local t = B.time(function() return ad.matmul(a, b) end)
  peak = 2 * n ^ 3 / t
  print(string.format("  bf16 matmul 8192^3: %.0f TFLOP/s (the MFU's peak)", peak / 1e12))
end

local function config(name)
  if name == "imagenet64" then return adm.config("imagenet64") end
  -- the fixture's adm_tiny (tests/bench/torch_adm.py CONFIGS.tiny)
  return { image_size = 32, num_channels = 32, num_res_blocks = 2, channel_mult = "1,2,2",
           attention_resolutions = "16,8", num_heads = 4, num_head_channels = 16, learn_sigma = true,
           class_cond = true, num_classes = 1000, use_scale_shift_norm = true, resblock_updown = true,
           use_new_attention_order = true, dropout = 0.0 }
end

local function model(name)
  local o = config(name)
  if B.SELFTEST then o = config("tiny") end
  ad.manual_seed(0)
  return adm.UNetModel(o):to(B.DEV), o
end

-- training step: eps MSE on the first 3 channels (the learned-sigma half gets no gradient,
-- as in the twin), AdamW over every parameter
local G, o = model("imagenet64")
local size = o.image_size
local x = ad.randn({ BATCH, 3, size, size }, { device = B.DEV, generator = ad.Generator(1) })
local noise = ad.randn({ BATCH, 3, size, size }, { device = B.DEV, generator = ad.Generator(2) })
local t = ad.randint(0, 1000, { BATCH }, { device = B.DEV, generator = ad.Generator(3) })
local y = ad.randint(0, 1000, { BATCH }, { device = B.DEV, generator = ad.Generator(4) })
local opt = ad.optim.AdamW(G:parameters(), { lr = 1e-4, weight_decay = 0 })
G:train()
-- one denominator for both MFUs: the larger of the two measured bf16 matmul rates
local flops, torch_peak = read_flops()
if peak and torch_peak and torch_peak > peak then peak = torch_peak end
for _, mode in ipairs(MODES) do
  local function step()
    opt:zero_grad()
    local out
    if mode == "bf16" then out = ad.autocast("bf16", function() return G(x, t, y) end) else out = G(x, t, y) end
    local loss = (out:narrow(2, 1, 3):float() - noise):square():mean()
    loss:backward()
    opt:step()
  end
  if not B.SELFTEST then ad.cuda.reset_peak_memory_stats() end
  local sec = B.time(step, { warmup = 2, batches = quick and 3 or 5, min_batch = 0 })
  local ips = BATCH / sec
  local peak_mem = B.SELFTEST and 0 or ad.cuda.memory_stats().peak / 2 ^ 30
  local line = string.format("  ADM-64 train step %s batch %d: %.1f ms, %.1f img/s, peak %.1f GiB", mode, BATCH,
    sec * 1e3, ips, peak_mem)
  B.emit(string.format("ADM64 train %s b%d", mode, BATCH), ips, "img/s")
  B.emit(string.format("ADM64 train %s peak mem", mode), peak_mem, "GiB")
  if flops and peak then
    local mfu = 3 * flops * ips / peak   -- forward + backward = 3 forwards
    line = line .. string.format(", MFU %.1f%%", 100 * mfu)
    B.emit(string.format("ADM64 train %s MFU", mode), 100 * mfu, "%")
  end
  print(line)
  if PROFILE_STEPS > 0 then
    print(string.format("  profiler window: ADM-64 train step %s batch %d, %d steps", mode, BATCH, PROFILE_STEPS))
    io.stdout:flush()
    ad.cuda.profiler_start()
    for _ = 1, PROFILE_STEPS do step() end
    ad.cuda.profiler_stop()
  end
end
G, opt = nil, nil
collectgarbage()

-- sampling: 50 respaced steps, ancestral (p_sample), learned sigma, under bf16 autocast and f32
for _, name in ipairs(SAMPLE) do
  local m, oc = model(name)
  m:eval()
  local d = ad.diffusion.create { steps = 1000, noise_schedule = "cosine", learn_sigma = true,
                                  timestep_respacing = tostring(STEPS) }
  local s = B.SELFTEST and oc.image_size or config(name).image_size
  local yl = ad.randint(0, 1000, { SBATCH }, { device = B.DEV, generator = ad.Generator(5) })
  local xT = ad.randn({ SBATCH, 3, s, s }, { device = B.DEV, generator = ad.Generator(6) })
  for _, mode in ipairs(SAMPLE_MODES) do
    local function loop()
      return ad.no_grad(function()
        local function run() return d:p_sample_loop(m, { SBATCH, 3, s, s }, { noise = xT, model_kwargs = { y = yl }, progress = false }) end
        if mode == "bf16" then return ad.autocast("bf16", run) end
        return run()
      end)
    end
    local sec = B.time(loop, { warmup = 1, batches = quick and 1 or 3, min_batch = 0 })
    local ips = SBATCH / sec
    print(string.format("  sample %s %s, %d steps, batch %d: %.2f s, %.2f img/s", name, mode, STEPS, SBATCH, sec, ips))
    B.emit(string.format("sample %s %s %d steps b%d", name, mode, STEPS, SBATCH), ips, "img/s")
  end
  m = nil
  collectgarbage()
end
