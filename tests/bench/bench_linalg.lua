-- bench_linalg.lua: advdiff's f32 matmul GFLOP/s and conv2d forward /
-- forward+backward times at the shapes of ADM's ResBlocks (batch 8, 3x3,
-- padding 1, C -> C: 128 channels at 32x32, 256 at 16x16).
-- Run: OMP_NUM_THREADS=2 build/advdiff tests/bench/bench_linalg.lua [quick]
-- Same work and same timing method (best of 4 blocks of 5 calls) as
-- torch_conv.py; run_conv.sh runs both and prints the speed ratio.
-- Besides the human-readable lines it prints "RESULT <name> <value>" lines.
local ad = require "advdiff"

local quick = arg and arg[1] == "quick"

-- wall-clock seconds: the core's monotonic clock (ad._now), else date(1)
-- (about 2 ms per call, taken once per block of 5 calls)
local wall = ad._now or function()
  local p = io.popen("date +%s.%N")
  local s = p:read("l")
  p:close()
  return tonumber(s)
end

local BLOCKS, PER_BLOCK = quick and 2 or 4, 5

-- best average seconds per call of fn over BLOCKS blocks of PER_BLOCK calls
local function best_time(fn)
  fn(); fn()                  -- warm-up: primitive creation, allocator, page faults
  local best = math.huge
  for _ = 1, BLOCKS do
    local t0 = wall()
    for _ = 1, PER_BLOCK do fn() end
    local t = (wall() - t0) / PER_BLOCK
    if t < best then best = t end
    collectgarbage()
  end
  return best
end

-- ---- matmul ----
for _, n in ipairs(quick and { 512 } or { 1024, 2048 }) do
  local a = ad.randn(n, n)
  local b = ad.randn(n, n)
  local t = best_time(function() local c <close> = ad.matmul(a, b) end)
  local gf = 2 * n * n * n / t / 1e9
  print(string.format("advdiff matmul %4d^3: %8.2f ms %7.1f GFLOP/s", n, t * 1e3, gf))
  print(string.format("RESULT matmul_%d %.2f", n, gf))
end

-- ---- conv2d ----
local SHAPES = { { "c128_32x32", 8, 128, 32, 32 }, { "c256_16x16", 8, 256, 16, 16 } }
for _, s in ipairs(SHAPES) do
  local name, n, c, h, w = table.unpack(s)
  local x = ad.randn(n, c, h, w, { requires_grad = true })
  local wt = ad.randn(c, c, 3, 3, { requires_grad = true })
  local b = ad.randn(c, { requires_grad = true })
  local gy = ad.randn(n, c, h, w)
  local flop = 2.0 * n * c * c * 9 * h * w
  local tf = best_time(function()
    ad.no_grad(function() local y <close> = ad.conv2d(x, wt, b, { padding = 1 }) end)
  end)
  local tb = best_time(function()
    x.grad, wt.grad, b.grad = nil, nil, nil
    local y <close> = ad.conv2d(x, wt, b, { padding = 1 })
    y:backward(gy)
  end)
  print(string.format("%-12s fwd %8.2f ms %7.1f GFLOP/s   fwd+bwd %8.2f ms %7.1f GFLOP/s",
    name, tf * 1e3, flop / tf / 1e9, tb * 1e3, 3 * flop / tb / 1e9))
  print(string.format("RESULT %s_fwd_ms %.3f", name, tf * 1e3))
  print(string.format("RESULT %s_fwdbwd_ms %.3f", name, tb * 1e3))
end
