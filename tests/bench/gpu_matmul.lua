-- gpu_matmul.lua: ad.matmul throughput on the GPU in TFLOP/s, bf16 / f16 / f32 /
-- TF32, at square sizes and at the ADM's linear-layer shapes. The same shapes
-- through PyTorch (cuBLAS) are tests/bench/torch_gpu_matmul.py; run.sh puts
-- the two side by side.  Usage: advdiff tests/bench/gpu_matmul.lua [--quick]
local ad = require "advdiff"
package.path = debug.getinfo(1, "S").source:gsub("^@", ""):gsub("[^/]*$", "") .. "?.lua;" .. package.path
local B = require "gpu_common"

B.need_gpu("gpu_matmul")
local quick = (... == "--quick")
print("gpu_matmul on " .. B.device_line())

local SHAPES = B.SELFTEST and { { 64, 48, 32 } } or {
  { 4096, 4096, 4096 }, { 8192, 8192, 8192 },
  { 8192, 1152, 384 },     -- ADM attention qkv at 32x32, batch 8 (tokens x 3C x C)
  { 32768, 768, 3072 },    -- a wide linear
}
local MODES = { { "bf16", "bf16" }, { "f16", "f16" }, { "f32", "f32" }, { "tf32", "f32" } }

for _, s in ipairs(SHAPES) do
  local m, n, k = s[1], s[2], s[3]
  for _, mode in ipairs(MODES) do
    local name, dt = mode[1], mode[2]
    if not (quick and m * n * k > 4096 ^ 3) then
      local a = ad.randn(m, k, { device = B.DEV, dtype = dt, generator = ad.Generator(1) })
      local b = ad.randn(k, n, { device = B.DEV, dtype = dt, generator = ad.Generator(2) })
      local prev = ad.cuda.allow_tf32(name == "tf32")
      local t = B.time(function() local c <close> = ad.matmul(a, b) end)
      ad.cuda.allow_tf32(prev)
      local tflops = 2 * m * n * k / t / 1e12
      print(string.format("  matmul %-5s %6dx%-6dx%-6d %8.3f ms  %7.1f TFLOP/s", name, m, n, k, t * 1e3, tflops))
      B.emit(string.format("matmul %s %dx%dx%d", name, m, n, k), tflops, "TFLOP/s")
      a:free(); b:free()
    end
  end
end
