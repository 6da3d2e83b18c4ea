-- bench_load.lua [REPEATS] [PATH]: time to a usable state dict for a
-- checkpoint with the key list and shapes of the paper's ImageNet 64x64 ADM
-- (fixtures/adm64_keys: 541 tensors, 295,904,454 f32 parameters, 1.18 GB),
-- written by our own writer, against torch.load (python3-torch) on the same
-- file in the same run.
--
--   build/advdiff tests/bench/bench_load.lua 3
--
-- Reports, best of REPEATS. The file is in the page cache for every run,
-- unless AD_BENCH_COLD=1 (and we may write /proc/sys/vm/drop_caches): then the
-- page cache is dropped before each load, ours and torch's alike.
--   ad.save                  writing the checkpoint
--   ad.load                  mapped: tensors usable, pages fault in on first touch
--   ad.load+sum              the same, then one pass over every tensor (all pages read)
--   ad.load{populate=true}   mapped with every page faulted in before it returns
--   ad.load{mmap=false}      read() into memory, tensors view the buffer
--   torch.load / +sum        the same measures for PyTorch
local ad = require "advdiff"

local args = { ... }
if #args == 0 and arg then args = arg end
local repeats = tonumber(args[1]) or 3
local path = args[2] or "/tmp/advdiff_bench_adm64.pt"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local fix = os.getenv("ADVDIFF_FIXTURES") or (here .. "/../../../shared/fixtures")

local clock = ad._now

-- keys and shapes in manifest order
local f = assert(io.open(fix .. "/adm64_keys/manifest.json", "rb"))
local js = f:read("a")
f:close()
local start = assert(js:find('"state_dict_keys_and_shapes"%s*:%s*{'))
local body = js:sub(start):match("^[^{]*(%b{})")
local keys, shapes, total = {}, {}, 0
for k, dims in body:gmatch('"([^"]+)"%s*:%s*%[([%d,%s]*)%]') do
  local s = {}
  for d in dims:gmatch("%d+") do s[#s + 1] = tonumber(d) end
  keys[#keys + 1] = k
  shapes[k] = s
  local n = 1
  for _, d in ipairs(s) do n = n * d end
  total = total + n
end
assert(#keys == 541 and total == 295904454, ("manifest: %d keys, %d parameters"):format(#keys, total))

print(("checkpoint: %d tensors, %d f32 parameters (%.2f GB) -> %s"):format(#keys, total, total * 4 / 1e9, path))
local sd = {}
ad.manual_seed(0)
for _, k in ipairs(keys) do sd[k] = ad.randn(shapes[k]) end

local cold = os.getenv("AD_BENCH_COLD") == "1"
local function drop_caches()
  os.execute("sync")
  local f = io.open("/proc/sys/vm/drop_caches", "w")
  if not f then error("AD_BENCH_COLD=1 needs write access to /proc/sys/vm/drop_caches") end
  f:write("3\n")
  f:close()
end
if cold then print("cold page cache: dropped before every load") end

local function best(name, fn, is_load)
  local b = math.huge
  for _ = 1, repeats do
    collectgarbage()
    if cold and is_load then drop_caches() end
    local t0 = clock()
    fn()
    local dt = clock() - t0
    if dt < b then b = dt end
  end
  print(("%-22s %8.3f s"):format(name, b))
  return b
end

best("ad.save", function() ad.save(path, sd) end)
sd = nil
collectgarbage()

local n_loaded
local t_load = best("ad.load", function()
  local d = ad.load(path)
  n_loaded = 0
  for _ in pairs(d) do n_loaded = n_loaded + 1 end
end, true)
assert(n_loaded == #keys)
local checksum
local t_sum = best("ad.load+sum", function()
  local d = ad.load(path)
  local s = 0
  for _, k in ipairs(keys) do s = s + d[k]:sum():item() end
  checksum = s
end, true)
local t_pop = best("ad.load{populate=true}", function() ad.load(path, { populate = true }) end, true)
local t_read = best("ad.load{mmap=false}", function() ad.load(path, { mmap = false }) end, true)
print(("ours: checksum %.6g"):format(checksum))

-- torch.load in the same run, on the same file
local py = "/usr/bin/python3"
local pf = io.open(py, "rb")
if not pf then
  print("torch.load: /usr/bin/python3 not installed, skipped")
  return
end
pf:close()
local p = io.popen(("%s %s/bench_load.py %s %d %s 2>&1"):format(py, here, path, repeats, cold and "cold" or "warm"))
local tl, ts = math.huge, math.huge
for line in p:lines() do
  local a = line:match("^torch%.load (%S+)$")
  local b = line:match("^torch%.load%+sum (%S+)")
  if a then tl = math.min(tl, tonumber(a)) end
  if b then ts = math.min(ts, tonumber(b)) end
  if not a and not b then print("  python: " .. line) end
end
p:close()
if tl == math.huge then print("torch.load: failed (see above)") return end
print(("%-22s %8.3f s"):format("torch.load", tl))
print(("%-22s %8.3f s"):format("torch.load+sum", ts))
print(("torch.load / ad.load: %.0fx (mapped), %.1fx (mapped and resident), %.1fx (read into memory); load+sum: %.1fx"):format(
  tl / t_load, tl / t_pop, tl / t_read, ts / t_sum))
if os.getenv("AD_BENCH_KEEP") == nil then os.remove(path) end
