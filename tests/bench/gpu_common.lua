--- gpu_common.lua: timing for the GPU benchmarks (tests/bench/gpu_*.lua).
-- time(fn) runs fn a few times to warm up (cuDNN's algorithm search, cuBLAS
-- handles, the caching allocator), then times batches of calls between device
-- synchronisations with the monotonic wall clock and returns the median
-- seconds per call. Lines "BENCH<TAB>key<TAB>value<TAB>unit" are what
-- tests/gpu/run.sh collects into its table.
local ad = require "advdiff"

local M = {}

-- ADVDIFF_OPS_SELFTEST=1: run on the CPU at toy sizes, to check the scripts without a GPU
M.SELFTEST = os.getenv("ADVDIFF_OPS_SELFTEST") == "1"
M.DEV = M.SELFTEST and "cpu" or "cuda"

local now = ad._now
local sync = function() if not M.SELFTEST then ad.cuda.synchronize() end end

--- exits 77 (skip) without a GPU, unless self-testing
function M.need_gpu(name)
  if not M.SELFTEST and not ad.cuda.is_available() then
    print(name .. ": SKIP: no CUDA device")
    os.exit(77)
  end
end

function M.time(fn, opts)
  opts = opts or {}
  local warm, batches, min_batch = opts.warmup or 3, opts.batches or 5, opts.min_batch or 0.05
  if M.SELFTEST then warm, batches, min_batch = 1, 1, 0 end
  for _ = 1, warm do fn() end
  sync()
  collectgarbage()
  -- calls per batch: enough for min_batch seconds
  local t0 = now()
  fn()
  sync()
  local one = math.max(now() - t0, 1e-6)
  local per = math.max(1, math.min(1000, math.ceil(min_batch / one)))
  local times = {}
  for b = 1, batches do
    local s = now()
    for _ = 1, per do fn() end
    sync()
    times[b] = (now() - s) / per
    collectgarbage()
  end
  table.sort(times)
  return times[(batches + 1) // 2]
end

function M.emit(key, value, unit)
  print(string.format("BENCH\t%s\t%.6g\t%s", key, value, unit))
end

function M.device_line()
  return M.SELFTEST and "cpu (self-test)" or ad.cuda.get_device_name(0)
end

return M
