-- gpu_conv.lua: conv2d forward and forward+backward on the GPU at the ADM's
-- shapes (guided-diffusion's 64x64 model: batch 32, 3x3 convolutions with
-- 192/384/576/768 channels at 64/32/16/8 pixels), f32 (no TF32), TF32 and bf16,
-- in ms and TFLOP/s (forward 2*N*C*O*9*H*W flops, backward twice that).
-- PyTorch on the same shapes: tests/bench/torch_gpu_conv.py.
--   advdiff tests/bench/gpu_conv.lua [--quick]
local ad = require "advdiff"
package.path = debug.getinfo(1, "S").source:gsub("^@", ""):gsub("[^/]*$", "") .. "?.lua;" .. package.path
local B = require "gpu_common"

B.need_gpu("gpu_conv")
local quick = (... == "--quick")
print("gpu_conv on " .. B.device_line())

local N = B.SELFTEST and 2 or 32
local SHAPES = B.SELFTEST and { { 8, 8 } } or { { 192, 64 }, { 384, 32 }, { 576, 16 }, { 768, 8 } }
local MODES = { { "f32", "f32" }, { "tf32", "f32" }, { "bf16", "bf16" } }

for _, s in ipairs(SHAPES) do
  local C, H = s[1], s[2]
  for _, mode in ipairs(MODES) do
    local name, dt = mode[1], mode[2]
    if not (quick and name == "tf32") then
      local prev = ad.cuda.allow_tf32(name == "tf32")
      local x = ad.randn(N, C, H, H, { device = B.DEV, dtype = dt, generator = ad.Generator(1) })
      local w = (ad.randn(C, C, 3, 3, { device = B.DEV, dtype = dt, generator = ad.Generator(2) }) * 0.05):detach()
      local gy = ad.randn(N, C, H, H, { device = B.DEV, dtype = dt, generator = ad.Generator(3) })
      local flops = 2 * N * C * C * 9 * H * H
      local tf = B.time(function() ad.no_grad(function() local y <close> = ad.conv2d(x, w, nil, { padding = 1 }) end) end)
      x.requires_grad = true
      w.requires_grad = true
      local tb = B.time(function()
        x.grad, w.grad = nil, nil
        local y <close> = ad.conv2d(x, w, nil, { padding = 1 })
        ad.backward({ y }, { gy })
      end)
      ad.cuda.allow_tf32(prev)
      print(string.format("  conv2d %-4s C=%-4d %3dpx  fwd %7.3f ms %6.1f TFLOP/s   fwd+bwd %7.3f ms %6.1f TFLOP/s",
        name, C, H, tf * 1e3, flops / tf / 1e12, tb * 1e3, 3 * flops / tb / 1e12))
      B.emit(string.format("conv2d fwd %s C=%d %dpx", name, C, H), tf * 1e3, "ms")
      B.emit(string.format("conv2d fwd+bwd %s C=%d %dpx", name, C, H), tb * 1e3, "ms")
      x:free(); w:free(); gy:free()
    end
  end
end
