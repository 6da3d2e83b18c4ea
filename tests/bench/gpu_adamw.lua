-- gpu_adamw.lua: the fused multi-tensor AdamW step on the GPU over about 300M
-- f32 parameters (ADM-64's 296M, as 300 tensors of 1M elements), in ms and in
-- GB/s of the bytes it must move (read p, g, m, v; write p, m, v: 28 bytes per
-- parameter). PyTorch's fused AdamW on the same: tests/bench/torch_gpu_adamw.py.
--   advdiff tests/bench/gpu_adamw.lua [--quick]
local ad = require "advdiff"
package.path = debug.getinfo(1, "S").source:gsub("^@", ""):gsub("[^/]*$", "") .. "?.lua;" .. package.path
local B = require "gpu_common"

B.need_gpu("gpu_adamw")
local quick = (... == "--quick")
print("gpu_adamw on " .. B.device_line())

local T, PER = quick and 60 or 300, 1000000
if B.SELFTEST then T, PER = 3, 1000 end
local ps, gs, ms, vs = {}, {}, {}, {}
for i = 1, T do
  ps[i] = ad.randn(PER, { device = B.DEV, generator = ad.Generator(i) })
  gs[i] = ad.randn(PER, { device = B.DEV, generator = ad.Generator(10000 + i) })
  ms[i] = ad.zeros(PER, { device = B.DEV })
  vs[i] = ad.zeros(PER, { device = B.DEV })
end
local step = 0
local t = B.time(function()
  step = step + 1
  ad._adam_step(ps, gs, ms, vs, { lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01,
                                  step = step, decoupled = true })
end)
local n = T * PER
local gbs = 28 * n / t / 1e9
print(string.format("  adamw f32, %d tensors, %.0fM params: %.3f ms, %.0f GB/s", T, n / 1e6, t * 1e3, gbs))
B.emit(string.format("adamw f32 %dM params", n // 1000000), gbs, "GB/s")

-- a device-to-device copy of the same bytes, the memory-bandwidth ceiling
local big = ad.empty(n // 4 * 4, { device = B.DEV })
local dst = ad.empty(n // 4 * 4, { device = B.DEV })
local tc = B.time(function() dst:copy_(big) end)
print(string.format("  device copy of %.1f GB: %.0f GB/s (read + write)", 4 * n / 1e9, 8 * n / tc / 1e9))
B.emit("device copy", 8 * n / tc / 1e9, "GB/s")
