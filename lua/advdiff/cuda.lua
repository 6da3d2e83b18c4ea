--- advdiff.cuda: the CUDA device, as ad.cuda (PyTorch's torch.cuda names).
--
--   ad.cuda.is_available()        true when advdiff was built with CUDA and a GPU is usable
--   ad.cuda.device_count()        number of GPUs (0 without a driver or GPU)
--   ad.cuda.unavailable_reason()  why is_available() is false ("" when it is true)
--   ad.cuda.synchronize([dev])    waits for the queued work (dev: 0-based ordinal or "cuda:N"; all by default)
--   ad.cuda.profiler_start(), ad.cuda.profiler_stop()
--                                 synchronize, then bracket a region for an external profiler
--                                 (tests/gpu/kprof.sh; nsys --capture-range=cudaProfilerApi)
--   ad.cuda.memory_stats([dev])   {allocated=, reserved=, peak=, peak_reserved=, num_cuda_malloc=, ...} in bytes
--   ad.cuda.memory_allocated([dev]), ad.cuda.memory_reserved([dev]), ad.cuda.max_memory_allocated([dev])
--   ad.cuda.reset_peak_memory_stats([dev])
--   ad.cuda.empty_cache()         returns cached, unused device memory to the driver
--   ad.cuda.allow_tf32([on])      TF32 tensor cores for f32 matmul/conv (off by default); returns the previous value
--   ad.cuda.get_device_name([dev])
-- Tensors move with x:cuda(), x:cpu(), x:to("cuda") or creation options {device = "cuda"}.
-- Without a GPU, asking for a CUDA tensor raises "no CUDA device: ...".
local core = require "advdiff.core"

local M = {}

function M.is_available() return core._cuda_is_available() end
function M.device_count() return core._cuda_device_count() end
function M.is_built() return core._cuda_built() end
function M.unavailable_reason() return core._cuda_unavailable_reason() end
function M.synchronize(dev) return core._cuda_synchronize(dev) end
function M.profiler_start() return core._cuda_profiler(true) end
function M.profiler_stop() return core._cuda_profiler(false) end
function M.memory_stats(dev) return core._cuda_memory_stats(dev) end
function M.memory_allocated(dev) return core._cuda_memory_stats(dev).allocated end
function M.memory_reserved(dev) return core._cuda_memory_stats(dev).reserved end
function M.max_memory_allocated(dev) return core._cuda_memory_stats(dev).peak end
function M.reset_peak_memory_stats(dev) return core._cuda_reset_peak_memory_stats(dev) end
function M.empty_cache() return core._cuda_empty_cache() end
function M.allow_tf32(on) return core._cuda_allow_tf32(on) end
function M.get_device_name(dev) return core._cuda_get_device_name(dev) end

--- The device to run on: "cuda" when a GPU is usable, else "cpu".
function M.default_device() return M.is_available() and "cuda" or "cpu" end

return M
