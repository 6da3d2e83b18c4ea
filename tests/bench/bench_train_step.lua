--- bench_train_step: one training step (forward, backward, SGD update) of a
-- small conv net shaped like a U-Net level (conv3x3 + GroupNorm + SiLU
-- blocks at 32x32 and 16x16, batch 32), timed in advdiff and, when
-- python3-torch is installed, in PyTorch on the same threads. Prints
-- ms/step for both and the ratio (>1: advdiff is faster).
--   OMP_NUM_THREADS=2 build/advdiff tests/bench/bench_train_step.lua
local ad = require "advdiff"
local nn = ad.nn
local cfg = ad.config{ batch = 32, ch = 64, steps = 10, warmup = 2, threads = 2 }

local function block(cin, cout)
  return nn.Sequential(nn.Conv2d(cin, cout, 3, {padding = 1}), nn.GroupNorm(8, cout), nn.SiLU())
end
ad.manual_seed(0)
local C = cfg.ch
local net = nn.Sequential(
  block(3, C), block(C, C), nn.AvgPool2d(2),
  block(C, 2 * C), block(2 * C, 2 * C), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * C, 10))
local x = ad.randn(cfg.batch, 3, 32, 32)
local y = ad.randint(0, 10, {cfg.batch})
local params = net:parameters()

local function step()
  local loss = ad.cross_entropy(net(x), y)
  for _, p in ipairs(params) do p.grad = nil end
  loss:backward()
  ad.no_grad(function()
    for _, p in ipairs(params) do p:copy_(p - p.grad * 0.01) end
  end)
  return loss:item()
end

local clock = ad._now       -- monotonic wall clock (os.clock would count both threads' CPU time)
for _ = 1, cfg.warmup do step() end
collectgarbage()
local t0 = clock()
for _ = 1, cfg.steps do step(); collectgarbage("step") end
local ms = (clock() - t0) / cfg.steps * 1000

local torch_ms
local py = io.open("/usr/bin/python3") and "/usr/bin/python3"
if py then
  local script = debug.getinfo(1, "S").source:sub(2):gsub("bench_train_step%.lua$", "torch_train_step.py")
  local cmd = string.format("%s %s %d %d %d %d %d 2>/dev/null", py, script, cfg.batch, cfg.ch, cfg.steps, cfg.warmup, cfg.threads)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  torch_ms = tonumber(out:match("ms_per_step ([%d%.]+)"))
end
print(string.format("train step (batch %d, %d/%d channels at 32/16 px): advdiff %.1f ms", cfg.batch, C, 2 * C, ms))
if torch_ms then
  print(string.format("                                        PyTorch %.1f ms   ratio %.2fx", torch_ms, torch_ms / ms))
else
  print("PyTorch not available (apt-get install python3-torch): no ratio")
end
