-- bench_metrics.lua: precision/recall (k = 3) and FID at N x N x D on the CPU,
-- advdiff against NumPy doing the same computation (bench_metrics.py, run
-- from here on the same features), printed as a ratio.
-- Run: OMP_NUM_THREADS=2 build/advdiff tests/bench/bench_metrics.lua [N] [D]
--      (default 10000 x 10000 x 2048; "quick" = 2000 x 2000 x 512)
-- Runs alternate (BENCH_REPS=2 rounds; best time of each side) and print the
-- machine's load average: on a shared, loaded machine absolute times move.
-- Besides the human-readable lines it prints "RESULT <name> <value>" lines.
local ad = require "advdiff"

local N, D = 10000, 2048
if arg and arg[1] == "quick" then N, D = 2000, 512
else
  N = tonumber(arg and arg[1]) or N
  D = tonumber(arg and arg[2]) or D
end
local K = 3
local python = os.getenv("PYTHON") or "/usr/bin/python3"
local here = (debug.getinfo(1, "S").source:gsub("^@", "")):match("^(.*)/[^/]*$") or "."

local function loadavg()
  local f = io.open("/proc/loadavg")
  if not f then return "?" end
  local s = f:read("l")
  f:close()
  return s:match("^(%S+ %S+ %S+)")
end
local now = ad._now

print(string.format("bench_metrics: N = %d real and %d fake features of D = %d, k = %d; OMP_NUM_THREADS=%s",
  N, N, D, K, os.getenv("OMP_NUM_THREADS") or "unset"))
print("load average (1/5/15 min) before: " .. loadavg())

-- Inception-like features: non-negative, off-centre, two slightly different sets
local g = ad.Generator(2024)
local real = ad.relu(ad.randn(N, D, { generator = g }) + 0.5)
local fake = ad.relu(ad.randn(N, D, { generator = g }) * 1.05 + 0.45)

local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p '" .. tmp .. "'")
ad.save(tmp .. "/real.npy", real)
ad.save(tmp .. "/fake.npy", fake)

-- alternate advdiff and NumPy runs (the machine's load drifts) and keep each
-- side's best time
local REPS = tonumber(os.getenv("BENCH_REPS") or "2")
local best = { pr = math.huge, fid = math.huge, numpy_pr_s = math.huge, numpy_fid_s = math.huge }
local p, r, fid
local res = {}
local cmd = string.format("OMP_NUM_THREADS=%s '%s' '%s/bench_metrics.py' '%s' %d", os.getenv("OMP_NUM_THREADS") or "2",
  python, here, tmp, K)
for rep = 1, REPS do
  local t0 = now()
  p, r = ad.metrics.precision_recall(real, fake, { k = K })
  local t_pr = now() - t0
  t0 = now()
  fid = ad.metrics.fid(real, fake)
  local t_fid = now() - t0
  best.pr, best.fid = math.min(best.pr, t_pr), math.min(best.fid, t_fid)
  print(string.format("[%d] advdiff precision/recall %.2f s, FID %.2f s   (load %s)", rep, t_pr, t_fid, loadavg()))
  local pipe = io.popen(cmd)
  for line in pipe:lines() do
    local name, v = line:match("^RESULT (%S+) (%S+)")
    if name then res[name] = tonumber(v) end
  end
  pipe:close()
  if not res.numpy_pr_s then break end
  best.numpy_pr_s = math.min(best.numpy_pr_s, res.numpy_pr_s)
  best.numpy_fid_s = math.min(best.numpy_fid_s, res.numpy_fid_s)
  print(string.format("[%d] numpy   precision/recall %.2f s, FID %.2f s   (load %s)", rep, res.numpy_pr_s,
    res.numpy_fid_s, loadavg()))
end
os.execute("rm -rf '" .. tmp .. "'")

print(string.format("advdiff precision/recall: %.2f s  (precision %.6f, recall %.6f)", best.pr, p, r))
print(string.format("advdiff FID:              %.2f s  (FID %.10g)", best.fid, fid))
if res.numpy_pr_s then
  print(string.format("numpy   precision/recall: %.2f s  (precision %.6f, recall %.6f)", best.numpy_pr_s,
    res.numpy_precision, res.numpy_recall))
  print(string.format("numpy   FID:              %.2f s  (FID %.10g, rel diff %.2e)", best.numpy_fid_s, res.numpy_fid,
    math.abs(res.numpy_fid - fid) / math.abs(fid)))
  print(string.format("speed ratio numpy/advdiff (best of %d each): precision/recall %.2fx, FID %.2fx", REPS,
    best.numpy_pr_s / best.pr, best.numpy_fid_s / best.fid))
  print(string.format("RESULT pr_ratio %.3f", best.numpy_pr_s / best.pr))
  print(string.format("RESULT fid_ratio %.3f", best.numpy_fid_s / best.fid))
else
  print("numpy benchmark did not run (" .. python .. " with numpy needed)")
end
print("load average after: " .. loadavg())
print(string.format("RESULT advdiff_pr_s %.3f", best.pr))
print(string.format("RESULT advdiff_fid_s %.3f", best.fid))
