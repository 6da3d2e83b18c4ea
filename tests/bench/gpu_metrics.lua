-- gpu_metrics.lua: improved precision/recall (k = 3: the k-NN radii of both
-- sets and the manifold counts) on the GPU at 50 000 x 50 000 x 2048 f32
-- features (the paper's evaluation size) and at 10 000 x 10 000, against the
-- CPU kernels at 10 000 in the same run for the ratio. Each timing is one
-- call of ad.metrics.precision_recall after a warm-up call at a small size
-- (cuBLAS handle, allocator), synchronised; the CPU's is one call too.
--   advdiff tests/bench/gpu_metrics.lua [--quick]     (--quick: 20 000 instead of 50 000)
-- Prints "gpu metrics: ..." (the line tests/gpu/run.sh shows) and BENCH lines.
local ad = require "advdiff"
package.path = debug.getinfo(1, "S").source:gsub("^@", ""):gsub("[^/]*$", "") .. "?.lua;" .. package.path
local B = require "gpu_common"

B.need_gpu("gpu_metrics")
local quick = (... == "--quick")
print("gpu_metrics on " .. B.device_line())

local D = 2048
local BIG, MID = quick and 20000 or 50000, 10000
if B.SELFTEST then D, BIG, MID = 64, 3000, 1500 end
local sync = function() if not B.SELFTEST then ad.cuda.synchronize() end end

local function sets(n, device)
  local real = ad.randn({ n, D }, { generator = ad.Generator(1), device = device })
  local fake = ad.randn({ n, D }, { generator = ad.Generator(2), device = device }) * 1.05 + 0.02
  return real, fake
end

-- seconds of one precision_recall call, and its result
local function timed(real, fake)
  sync()
  local t0 = ad._now()
  local p, r = ad.metrics.precision_recall(real, fake)
  sync()
  return ad._now() - t0, p, r
end

do  -- warm-up
  local real, fake = sets(1000, B.DEV)
  timed(real, fake)
end

local function flops(n) return 3 * 2 * n * n * D end   -- two radii passes and the counts, full blocks

local real, fake = sets(MID, B.DEV)
local t_mid, p_mid, r_mid = timed(real, fake)
print(string.format("  %s %d x %d x %d: %.3f s (%.1f TFLOP/s of distance products), precision %.4f recall %.4f",
  B.DEV, MID, MID, D, t_mid, flops(MID) / t_mid / 1e12, p_mid, r_mid))
local rc, fc = real:cpu(), fake:cpu()
real, fake = nil, nil
collectgarbage()
local t_cpu, p_cpu, r_cpu = timed(rc, fc)
print(string.format("  cpu %d x %d x %d: %.3f s (%d threads), precision %.4f recall %.4f", MID, MID, D, t_cpu,
  tonumber(os.getenv("OMP_NUM_THREADS") or "0") or 0, p_cpu, r_cpu))
if p_cpu ~= p_mid or r_cpu ~= r_mid then
  print("  WARNING: the device and the CPU disagree at 10k (tests/gpu/test_cuda_metrics.lua checks why)")
end
rc, fc = nil, nil
collectgarbage()

real, fake = sets(BIG, B.DEV)
local t_big, p_big, r_big = timed(real, fake)
print(string.format("  %s %d x %d x %d: %.3f s (%.1f TFLOP/s), precision %.4f recall %.4f", B.DEV, BIG, BIG, D,
  t_big, flops(BIG) / t_big / 1e12, p_big, r_big))

local kb, km = string.format("%gk", BIG / 1000), string.format("%gk", MID / 1000)
print(string.format("gpu metrics: precision/recall %s x %s x %d in %.2f s; at %s %.3f s vs cpu %.2f s (cpu/gpu %.1fx)",
  kb, kb, D, t_big, km, t_mid, t_cpu, t_cpu / t_mid))
B.emit(string.format("precision_recall %s x %d", kb, D), t_big * 1e3, "ms")
B.emit(string.format("precision_recall %s x %d", km, D), t_mid * 1e3, "ms")
B.emit(string.format("precision_recall %s x %d cpu", km, D), t_cpu * 1e3, "ms")
