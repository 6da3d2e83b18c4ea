-- test_cuda_random.lua: the Philox streams are the same on both devices for the
-- same generator state: rand and randint bit for bit, randn (through log, sin
-- and cos in double) bit for bit in f32 and within a few ulp in f64, in-place
-- uniform_/normal_, dropout masks, and the generator advancing by the same
-- offset. Exits 77 without a device, 1 on a mismatch.
local ad = require "advdiff"

local SELFTEST = os.getenv("ADVDIFF_OPS_SELFTEST") == "1"
local DEV = SELFTEST and "cpu" or "cuda"
if not SELFTEST and not ad.cuda.is_available() then
  print("test_cuda_random: SKIP: no CUDA device: " .. ad.cuda.unavailable_reason())
  os.exit(77)
end

local n_pass, n_fail = 0, 0
local function report(ok, line)
  if ok then n_pass = n_pass + 1 else n_fail = n_fail + 1 end
  print(string.format("%-5s %s", ok and "ok" or "FAIL", line))
end

-- number of elements whose bits differ (compared through i64/f64 views of the values)
local function mismatches(a, b)
  local x, y = a:cpu(), b:cpu()
  if x:dtype() == "f64" then return x:ne(y):float():sum():item() end
  return x:double():ne(y:double()):float():sum():item()
end

local SHAPE = { 1001, 513 }   -- odd: the last Philox block is half used
for _, dt in ipairs({ "f32", "f64", "bf16", "f16" }) do
  local gc, gg = ad.Generator(2024), ad.Generator(2024)
  local uc = ad.rand(SHAPE, { dtype = dt, generator = gc })
  local ug = ad.rand(SHAPE, { dtype = dt, generator = gg, device = DEV })
  report(mismatches(ug, uc) == 0, string.format("rand %-5s bit-identical (%d differ)", dt, mismatches(ug, uc)))
  local nc = ad.randn(SHAPE, { dtype = dt, generator = gc })
  local ng = ad.randn(SHAPE, { dtype = dt, generator = gg, device = DEV })
  local bad = mismatches(ng, nc)
  if dt == "f64" then
    local rel = (ng:cpu() - nc):abs():max():item()
    report(rel < 1e-13, string.format("randn f64 within a few ulp (%d differ in the last bits, max diff %.1e)", bad, rel))
  elseif bad == 0 then
    report(true, string.format("randn %-4s bit-identical", dt))
  else
    -- CUDA's double log/sin/cos may differ from glibc's in the last bit of the double,
    -- which reaches the rounded value only within an ulp of a rounding boundary
    local d = (ng:cpu():double() - nc:double()):abs()
    local ulps = (d / (nc:double():abs() + 1e-30)):max():item()
    report(bad <= 4 and ulps < 2 ^ -7, string.format("randn %-4s: %d of %d values one rounding apart (rel %.1e)", dt,
                                                    bad, nc:numel(), ulps))
  end
  local sc, sg = gc:get_state(), gg:get_state()
  report(sc.offset == sg.offset, string.format("generator offsets agree after %s draws (%d, %d)", dt, sc.offset, sg.offset))
end

local gc, gg = ad.Generator(7), ad.Generator(7)
local ic = ad.randint(-1000, 1000000, SHAPE, { generator = gc, dtype = "i64" })
local ig = ad.randint(-1000, 1000000, SHAPE, { generator = gg, dtype = "i64", device = DEV })
report(ig:cpu():ne(ic):sum():item() == 0, "randint i64 bit-identical")

local xc = ad.zeros(SHAPE)
local xg = ad.zeros(SHAPE, { device = DEV })
xc:narrow(2, 3, 100):uniform_(-2, 5, { generator = ad.Generator(9) })
xg:narrow(2, 3, 100):uniform_(-2, 5, { generator = ad.Generator(9) })
report(mismatches(xg, xc) == 0, "uniform_ into a strided view bit-identical")
xc:normal_(1, 3, { generator = ad.Generator(10) })
xg:normal_(1, 3, { generator = ad.Generator(10) })
report(mismatches(xg, xc) == 0, "normal_ bit-identical")

local src = ad.randn(SHAPE, { generator = ad.Generator(11) })
local dc = ad.dropout(src, { p = 0.1, generator = ad.Generator(12) })
local dg = ad.dropout(src:to(DEV), { p = 0.1, generator = ad.Generator(12) })
report(mismatches(dg, dc) == 0, "dropout output (mask and scale) bit-identical")

ad.manual_seed(31337)
local a = ad.randn(1000)
ad.manual_seed(31337)
local b = ad.randn(1000, { device = DEV })
report(mismatches(b, a) == 0, "default generator: manual_seed then randn on either device")

print(string.format("philox on %s: %d passed, %d failed", DEV, n_pass, n_fail))
os.exit(n_fail == 0 and 0 or 1)
