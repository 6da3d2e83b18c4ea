-- bench_adm.lua: advdiff's side of the ADM benchmark; torch_adm.py is the
-- PyTorch side and run_adm.sh runs both alternately and prints the table.
--
--   advdiff bench_adm.lua check DIR CONFIG
--     loads DIR/CONFIG.pt (random weights written by torch_adm.py prepare)
--     through ad.models.adm.from_checkpoint, runs DIR/CONFIG_check.pt's x, t, y
--     and respaced p_sample steps with the same injected noise (tiny: the
--     whole 50-step loop; imagenet64: its last 3 steps), and fails unless both
--     agree with PyTorch's outputs (forward: 1e-4 of max|ref|; samples: 2e-4).
--   advdiff bench_adm.lua bench DIR CONFIG MODE BATCH REPS [STEPS]
--     MODE fwd_fwdbwd: forward (eval, no_grad) and forward+backward (train mode,
--     loss = sum(output * R), parameter grads reset each call); MODE sample: a
--     STEPS-step (default 50) respaced p_sample_loop, images/s.
-- CONFIG: tiny (the fixture adm_tiny's options) or imagenet64
-- (ad.models.adm.config "imagenet64"). Prints "RESULT <key> <value>" lines with
-- the same keys as torch_adm.py. Each timing: one warm-up call, then the best
-- of REPS calls, wall clock (ad._now) and process CPU time (os.clock, summed
-- over threads). Every call ends with a full collectgarbage() (inside the
-- timed region): tensors are freed when Lua collects them, and without it the
-- garbage of earlier calls would sit in memory while the next one runs.
local ad = require "advdiff"
local adm = require "advdiff.models.adm"

local CONFIGS = {
  tiny = {
    image_size = 32, num_channels = 32, num_res_blocks = 2, channel_mult = "1,2,2", attention_resolutions = "16,8",
    num_heads = 4, num_head_channels = 16, learn_sigma = true, class_cond = true, use_scale_shift_norm = true,
    resblock_updown = true, use_new_attention_order = true, dropout = 0.0,
  },
  imagenet64 = adm.model_options(adm.config("imagenet64")),
}
-- respaced sampling as torch_adm.py's Sampler: cosine schedule, learned-range
-- sigma, eps prediction, clip_denoised
local function sampler(steps)
  return ad.diffusion.create { steps = 1000, noise_schedule = "cosine", learn_sigma = true,
                               timestep_respacing = tostring(steps) }
end

local function usage(msg)
  io.stderr:write("bench_adm.lua: " .. msg .. "\n" ..
    "usage: bench_adm.lua check DIR CONFIG | bench DIR CONFIG fwd_fwdbwd|sample BATCH REPS [STEPS]\n")
  os.exit(2)
end

local mode, dir, config = arg[1], arg[2], arg[3]
if not dir or not config then usage("missing arguments") end
if not CONFIGS[config] then usage("unknown config '" .. config .. "' (tiny, imagenet64)") end

local function load_model()
  return adm.from_checkpoint(dir .. "/" .. config .. ".pt", CONFIGS[config])
end

local function max_abs(t) return t:abs():max():item() end

-- inputs as torch_adm.py's check_inputs draws them are not reproducible here
-- (different RNG), so the timed inputs are our own; only their shapes matter
local function inputs(n)
  local size = CONFIGS[config].image_size
  ad.manual_seed(100 + n)
  return ad.randn(n, 3, size, size), ad.randint(0, 1000, { n }), ad.randint(0, 1000, { n })
end

local function status_kb(field)
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)")) or 0
end

-- restart the kernel's peak-RSS counter (VmHWM) from the current RSS
local function reset_peak_rss()
  local f = io.open("/proc/self/clear_refs", "w")
  if f then f:write("5"); f:close() end
end

local function timed(fn, reps)
  fn()
  local best_w, best_c = math.huge, math.huge
  for _ = 1, reps do
    local w0, c0 = ad._now(), os.clock()
    fn()
    best_w = math.min(best_w, ad._now() - w0)
    best_c = math.min(best_c, os.clock() - c0)
  end
  return best_w, best_c
end

local function result(key, fmt, v) print(string.format("RESULT %s " .. fmt, key, v)) end

if mode == "check" then
  local model = load_model()
  local ref = ad.load(dir .. "/" .. config .. "_check.pt")
  local out = ad.no_grad(function() return model(ref.x, ref.t, ref.y) end)
  local err = max_abs(out:double() - ref.output:double()) / max_abs(ref.output:double())
  print(string.format("%s forward: advdiff vs PyTorch twin, max|diff|/max|ref| = %.3g", config, err))
  if not (err <= 1e-4) then error(string.format("%s: advdiff's output differs from PyTorch's (%.3g > 1e-4)", config, err)) end

  -- the whole respaced loop, or (imagenet64) its last `start` steps from x_T:
  -- see torch_adm.py's SAMPLE_CHECK
  local steps, start = ref.sample_steps:item(), ref.sample_start:item()
  local diff = sampler(steps)
  local i = 0
  local opts = { noise = ref.x_T, model_kwargs = { y = ref.y }, progress = false,
                 noise_fn = function() i = i + 1; return ref.step_noise:select(1, i) end }
  local sample
  if start == steps then
    sample = diff:p_sample_loop(model, ref.x_T:shape(), opts)
  else
    sample = ref.x_T
    local n = sample:shape()[1]
    ad.no_grad(function()
      for s = start - 1, 0, -1 do
        sample = diff:p_sample(model, sample, ad.full({ n }, s, { dtype = "i64" }), opts).sample
      end
    end)
  end
  err = max_abs(sample:double() - ref.sample:double())
  print(string.format("%s p_sample, %d of %d respaced steps: advdiff vs PyTorch twin, max|diff| = %.3g",
    config, start, steps, err))
  -- the fixture's bound for a respaced loop
  if not (err <= 2e-4) then
    error(string.format("%s: advdiff's samples differ from PyTorch's (max|diff| %.3g)", config, err))
  end
elseif mode == "bench" then
  local what, n, reps, steps = arg[4], math.tointeger(tonumber(arg[5])), math.tointeger(tonumber(arg[6])),
    math.tointeger(tonumber(arg[7] or "50"))
  if not n or not reps or not steps then usage("BATCH, REPS and STEPS must be integers") end
  local model = load_model()
  local x, t, y = inputs(n)
  local tag = string.format("%s_b%d", config, n)
  if what == "fwd_fwdbwd" then
    model:eval()
    local function fwd()
      ad.no_grad(function() local _ <close> = model(x, t, y) end)
      collectgarbage()
    end
    collectgarbage()
    ad.reset_peak_memory()
    local base = ad.memory().cpu
    reset_peak_rss()
    local rss0 = status_kb("VmRSS")
    local w, c = timed(fwd, reps)
    result(tag .. "_fwd_ms", "%.3f", w * 1e3)
    result(tag .. "_fwd_cpums", "%.3f", c * 1e3)
    result(tag .. "_fwd_rss_mb", "%.1f", status_kb("VmHWM") / 1024)
    result(tag .. "_fwd_rssgrow_mb", "%.1f", (status_kb("VmHWM") - rss0) / 1024)
    result(tag .. "_fwd_tensor_mb", "%.1f", (ad.memory().cpu_peak - base) / 2 ^ 20)

    model:train()    -- the training case: dropout live (imagenet64 has 0.1)
    local params = model:parameters()
    local s = x:shape()
    s[2] = CONFIGS[config].learn_sigma and 6 or 3
    ad.manual_seed(5)
    local r = ad.randn(s)
    local function fwdbwd()
      for _, p in ipairs(params) do p.grad = nil end
      do (model(x, t, y) * r):sum():backward() end
      collectgarbage()
    end
    collectgarbage()
    ad.reset_peak_memory()
    base = ad.memory().cpu
    reset_peak_rss()
    rss0 = status_kb("VmRSS")
    w, c = timed(fwdbwd, reps)
    result(tag .. "_fwdbwd_ms", "%.3f", w * 1e3)
    result(tag .. "_fwdbwd_cpums", "%.3f", c * 1e3)
    result(tag .. "_fwdbwd_rss_mb", "%.1f", status_kb("VmHWM") / 1024)
    result(tag .. "_fwdbwd_rssgrow_mb", "%.1f", (status_kb("VmHWM") - rss0) / 1024)
    result(tag .. "_fwdbwd_tensor_mb", "%.1f", (ad.memory().cpu_peak - base) / 2 ^ 20)
  elseif what == "sample" then
    model:eval()
    local diff = sampler(steps)
    local w0 = ad._now()
    local img = diff:p_sample_loop(model, x:shape(), { model_kwargs = { y = y }, progress = false })
    local w = ad._now() - w0
    assert(img:shape()[1] == n)
    result(string.format("%s_sample%d_img_s", tag, steps), "%.4f", n / w)
    result(tag .. "_sample_rss_mb", "%.1f", status_kb("VmHWM") / 1024)
  else
    usage("unknown bench mode '" .. tostring(what) .. "'")
  end
else
  usage("unknown mode '" .. tostring(mode) .. "'")
end
