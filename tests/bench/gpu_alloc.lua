-- gpu_alloc.lua: the caching device allocator: the cost of a CUDA tensor's
-- allocation and release (cached, so no cudaMalloc/cudaFree) against a host
-- tensor's, and a loop of training-step-like allocation patterns, which must
-- make no cudaMalloc after its first iteration.
--   advdiff tests/bench/gpu_alloc.lua
local ad = require "advdiff"
package.path = debug.getinfo(1, "S").source:gsub("^@", ""):gsub("[^/]*$", "") .. "?.lua;" .. package.path
local B = require "gpu_common"

B.need_gpu("gpu_alloc")
print("gpu_alloc on " .. B.device_line())

local SIZES = { 256, 4096, 65536, 1048576, 4194304, 16777216 }   -- elements (f32)
for _, dev in ipairs(B.SELFTEST and { "cpu" } or { "cuda", "cpu" }) do
  local n = 2000
  local t0 = ad._now()
  for i = 1, n do
    local x <close> = ad.empty(SIZES[i % #SIZES + 1], { device = dev })
  end
  local us = (ad._now() - t0) / n * 1e6
  print(string.format("  empty + free on %-4s: %.2f us per tensor (mixed sizes 1 KiB .. 64 MiB)", dev, us))
  B.emit("alloc+free " .. dev, us, "us")
end

-- a "training step": activations of many sizes alive together, freed in another order
local function step()
  local live = {}
  for i = 1, 60 do live[i] = ad.empty((i * 7919) % 3000000 + 1000, { device = B.DEV }) end
  for i = 60, 1, -2 do live[i]:free() end
  for i = 1, 60, 2 do live[i]:free() end
end
step()
if B.SELFTEST then print("  (self-test: the allocator statistics need a GPU)"); return end
local s1 = ad.cuda.memory_stats()
local t0 = ad._now()
for _ = 1, 50 do step() end
local dt = (ad._now() - t0) / 50
local s2 = ad.cuda.memory_stats()
print(string.format("  50 steps of 60 tensors: %d cudaMalloc, %d cudaFree after the first step; %.1f us per step; "
  .. "reserved %.1f MiB for a peak of %.1f MiB", s2.num_cuda_malloc - s1.num_cuda_malloc,
  s2.num_cuda_free - s1.num_cuda_free, dt * 1e6, s2.reserved / 2 ^ 20, s2.peak / 2 ^ 20))
B.emit("cudaMalloc after step 1", s2.num_cuda_malloc - s1.num_cuda_malloc, "calls")
if s2.num_cuda_malloc ~= s1.num_cuda_malloc then os.exit(1) end
