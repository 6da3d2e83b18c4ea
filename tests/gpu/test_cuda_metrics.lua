-- test_cuda_metrics.lua: the metric kernels on CUDA (core/cuda/cuda_metrics.c,
-- kernels/cuda/metrics.cu) against the CPU's: k-NN radii, manifold counts,
-- cdist, mean/covariance, and the Lua metrics (prdc, fid) that keep CUDA
-- features on the GPU.
--
--   advdiff tests/gpu/test_cuda_metrics.lua [--quick]
--
-- The CUDA kernels decide every pair as the CPU's f64 recomputation does, so
-- radii must agree to 1e-9 relative (they are meant to be bit-identical; the
-- count of identical radii is printed) and counts exactly, except where a
-- pair's distance lies within 1e-9 (relative) of the radius it is compared
-- with: each differing count is checked against the number of such pairs,
-- found from f64 cdist on the CPU.
-- Exits 77 without a CUDA device, 1 when a check fails. ADVDIFF_OPS_SELFTEST=1
-- runs both sides on the CPU, to check this script without a GPU.
local ad = require "advdiff"
local core = require "advdiff.core"

local QUICK = false
for _, a in ipairs { ... } do if a == "--quick" then QUICK = true end end

local SELFTEST = os.getenv("ADVDIFF_OPS_SELFTEST") == "1"
local DEV = SELFTEST and "cpu" or "cuda"
if not SELFTEST and not ad.cuda.is_available() then
  print("test_cuda_metrics: SKIP: no CUDA device: " .. ad.cuda.unavailable_reason())
  os.exit(77)
end
print("test_cuda_metrics on " .. (SELFTEST and "cpu (self-test)" or ad.cuda.get_device_name(0)))

local REL = 1e-9     -- radii, and the near-radius band of the count checks
local STAT = 1e-12   -- cdist, mean/covariance (f64 products in different orders)

local n_pass, n_fail = 0, 0
local function check(name, ok, detail)
  print(string.format("%-58s %-4s %s", name, ok and "ok" or "FAIL", detail or ""))
  if ok then n_pass = n_pass + 1 else n_fail = n_fail + 1 end
end
local function case(name, fn)
  local ok, err = pcall(fn)
  if not ok then check(name, false, "ERROR " .. tostring(err):gsub("\n", " | ")) end
end

local function feats(n, d, seed) return ad.randn({ n, d }, { generator = ad.Generator(seed) }) end
local function dev(t) if t == nil then return nil end return t:to(DEV) end
local function on_dev(t) return t:device():sub(1, #DEV) == DEV end

-- max |a - b| / max |b| (b on the CPU)
local function rel(a, b)
  local scale = b:abs():max():item()
  local diff = (a:cpu() - b):abs():max():item()
  return scale > 0 and diff / scale or diff
end

-- radii: the largest relative difference (0 where both are 0) and how many are bit-identical
local function cmp_radii(name, g, c)
  g = g:cpu()
  assert(g:dtype() == "f64" and c:dtype() == "f64", "radii must be f64")
  local worst = ((g - c):abs() / c:abs():clamp_min(1e-300)):max():item()
  local same = g:eq(c):double():sum():item()
  check(name, worst <= REL, string.format("max rel %.1e, %d of %d identical", worst, math.tointeger(same), c:numel()))
  return same == c:numel()
end

-- the number of pairs of row `row` (1, D) against `set` (K, D) whose distance
-- lies within REL of the radius it is compared with (radius: a number or (K) f64)
local function near_pairs(row, set, radius)
  local d = ad.cdist(row, set):reshape(-1)
  local r = type(radius) == "number" and radius or radius:double()
  local band = type(r) == "number" and REL * r or r * REL
  return (d - r):abs():le(band):double():sum():item()
end

-- counts g (device) and c (CPU), i64: how many differ, and how many of those
-- by more than their near-radius pairs (near(i) for element i)
local function count_diffs(g, c, near)
  assert(g:dtype() == "i64" and c:dtype() == "i64", "counts must be i64")
  local gl, cl = g:cpu():tolist(), c:tolist()
  local differ, unexplained = 0, 0
  for i = 1, #cl do
    if gl[i] ~= cl[i] then
      differ = differ + 1
      if math.abs(gl[i] - cl[i]) > near(i) then unexplained = unexplained + 1 end
    end
  end
  return differ, unexplained, #cl
end

local function cmp_counts(name, g, c, near)
  local differ, unexplained, n = count_diffs(g, c, near)
  check(name, unexplained == 0, string.format("%d of %d differ, %d beyond the near-radius pairs", differ, n,
    unexplained))
end

-- radii of both sets and all three counts, device against CPU
local function prdc_parity(label, real, fake, k, opts)
  opts = opts or {}
  local block = opts.block_rows or 0
  local rr_c = core._knn_radii(real, k, opts.real_ids, 0)
  local rf_c = core._knn_radii(fake, k, opts.fake_ids, 0)
  local rg, fg = dev(real), dev(fake)
  local rr_g = core._knn_radii(rg, k, dev(opts.real_ids), block)
  local rf_g = core._knn_radii(fg, k, dev(opts.fake_ids), block)
  check(label .. ": radii stay on the device", on_dev(rr_g) and on_dev(rf_g), rr_g:device())
  local exact = cmp_radii(label .. ": real radii", rr_g, rr_c)
  exact = cmp_radii(label .. ": fake radii", rf_g, rf_c) and exact
  -- counts from the same (CPU) radii on both sides, so that only the decisions are compared
  local fir_c, rir_c, rif_c = core._manifold_counts(real, fake, rr_c, rf_c, 0)
  local fir_g, rir_g, rif_g = core._manifold_counts(rg, fg, dev(rr_c), dev(rf_c), block)
  cmp_counts(label .. ": fake_in_real", fir_g, fir_c,
    function(j) return near_pairs(fake:narrow(1, j, 1), real, rr_c) end)
  cmp_counts(label .. ": real_in_real", rir_g, rir_c,
    function(i) return near_pairs(real:narrow(1, i, 1), fake, rr_c:narrow(1, i, 1):item()) end)
  cmp_counts(label .. ": real_in_fake", rif_g, rif_c,
    function(i) return near_pairs(real:narrow(1, i, 1), fake, rf_c) end)
  return exact
end

-- ------------------------------------------------------------------------ cases

local N, M = 3000, 2500
if QUICK then N, M = 1200, 1000 end

case("D=64 f32", function()
  local real, fake = feats(N, 64, 1), feats(M, 64, 2) * 1.1 + 0.05
  for _, k in ipairs { 3, 5 } do prdc_parity(string.format("D=64 k=%d", k), real, fake, k) end
  -- the checker itself: a count off by one where no pair is near a radius is caught
  local rr = core._knn_radii(real, 3, nil, 0)
  local fir = core._manifold_counts(real, fake, rr, nil, 0)
  local off = fir:tolist()
  off[7] = off[7] + 1
  local _, unexplained = count_diffs(core.tensor(off, { dtype = "i64" }), fir,
    function(j) return near_pairs(fake:narrow(1, j, 1), real, rr) end)
  check("the count checker catches an unexplained difference", unexplained == 1)
  -- the Lua metrics on device features: same numbers, radii left on the device
  local rg, fg = dev(real), dev(fake)
  local c = ad.metrics.prdc(real, fake, { k = 5 })
  local g = ad.metrics.prdc(rg, fg, { k = 5 })
  check("prdc k=5 on device features: radii stay there", on_dev(g.real_radii) and on_dev(g.fake_radii),
    g.real_radii:device())
  local worst = 0
  for _, key in ipairs { "precision", "recall", "density", "coverage" } do
    worst = math.max(worst, math.abs(g[key] - c[key]))
  end
  check("prdc k=5: precision, recall, density, coverage", worst == 0,
    string.format("max |diff| %.2e (p %.4f r %.4f d %.4f c %.4f)", worst, g.precision, g.recall, g.density,
      g.coverage))
  local rr3 = ad.metrics.knn_radii(real, 3)
  local pc, rc = ad.metrics.precision_recall(real, fake, { radii = { real = rr3 } })
  local pg, rgl = ad.metrics.precision_recall(rg, fg, { radii = { real = rr3 } })
  check("precision_recall k=3 (real radii given on the CPU)", math.abs(pg - pc) == 0 and math.abs(rgl - rc) == 0,
    string.format("p %.4f/%.4f r %.4f/%.4f", pg, pc, rgl, rc))
end)

case("bootstrap ids", function()
  local real, fake = feats(N, 64, 3), feats(M, 64, 4)
  local ir = ad.randint(0, N, { N }, { generator = ad.Generator(5), dtype = "i64" })
  local jf = ad.randint(0, M, { M }, { generator = ad.Generator(6), dtype = "i64" })
  prdc_parity("ids k=3", real:index_select(1, ir), fake:index_select(1, jf), 3, { real_ids = ir, fake_ids = jf })
  local c = ad.metrics.knn_radii(real:index_select(1, ir), 5, { ids = ir })
  local g = ad.metrics.knn_radii(dev(real):index_select(1, dev(ir)), 5, { ids = ir })   -- CPU ids, moved by Lua
  cmp_radii("ad.metrics.knn_radii k=5, CPU ids with device features", g, c)
end)

case("D=2048", function()
  local n, m = QUICK and 800 or 2000, QUICK and 700 or 1500
  local real, fake = feats(n, 2048, 7), feats(m, 2048, 8) * 0.9
  prdc_parity("D=2048 k=3 (blocks of 700 rows)", real, fake, 3, { block_rows = 700 })
  if not QUICK then prdc_parity("D=2048 k=5", real, fake, 5) end
end)

case("duplicate rows", function()
  -- rows 1..50 three more times (radius exactly 0 for k = 3), 51..100 once more;
  -- fakes that are exact copies of real rows (distance exactly 0 to a radius of 0)
  local base = feats(600, 32, 9)
  local real = ad.cat({ base, base:narrow(1, 1, 50), base:narrow(1, 1, 50), base:narrow(1, 1, 50),
                        base:narrow(1, 51, 50) }, 1)
  local fake = ad.cat({ base:narrow(1, 1, 120), feats(400, 32, 10) }, 1)
  prdc_parity("duplicates k=3", real, fake, 3)
  local r = core._knn_radii(dev(real), 3, nil, 0):cpu()
  check("duplicates: radius 0 for rows with 3 copies", r:narrow(1, 1, 50):abs():max():item() == 0,
    string.format("max %.3g", r:narrow(1, 1, 50):abs():max():item()))
end)

case("equidistant rows (exact fallback)", function()
  -- 64 rows 3 e_i: every pair exactly 3 sqrt(2) apart, far more ties at the
  -- k-th distance than the k + 8 candidates, so the bound cannot certify them
  local basis = ad.eye(64) * 3
  local real = ad.cat({ basis, feats(300, 64, 11) * 10 }, 1)
  local fake = ad.cat({ basis:narrow(1, 1, 20), feats(200, 64, 12) * 10 }, 1)
  prdc_parity("equidistant k=3", real, fake, 3)
  local r = core._knn_radii(dev(real), 3, nil, 0):cpu():narrow(1, 1, 64)
  check("equidistant: radius 3 sqrt(2)", rel(r, ad.full({ 64 }, 3 * math.sqrt(2), { dtype = "f64" })) <= 1e-15)
end)

case("f64 features", function()
  local real, fake = feats(1500, 48, 13):double(), feats(1200, 48, 14):double() + 0.1
  prdc_parity("f64 k=3", real, fake, 3, { block_rows = 333 })
end)

case("cdist and mean_cov", function()
  local a, b = feats(300, 40, 15) + 2, feats(200, 40, 16)
  check("cdist (300 x 200, D=40)", rel(ad.cdist(dev(a), dev(b)), ad.cdist(a, b)) <= STAT,
    string.format("rel %.1e", rel(ad.cdist(dev(a), dev(b)), ad.cdist(a, b))))
  for _, s in ipairs { { N, 64 }, { QUICK and 600 or 2000, 2048 } } do
    local x = feats(s[1], s[2], 17) * 0.5 + 1
    local mu_c, sg_c = core._mean_cov(x, 1)
    local mu_g, sg_g = core._mean_cov(dev(x), 1)
    local e1, e2 = rel(mu_g, mu_c), rel(sg_g, sg_c)
    check(string.format("mean_cov (%d x %d)", s[1], s[2]), e1 <= STAT and e2 <= STAT and on_dev(sg_g),
      string.format("mu %.1e sigma %.1e", e1, e2))
    local sym = (sg_g:cpu() - sg_g:cpu():t()):abs():max():item()
    check(string.format("mean_cov (%d x %d): sigma symmetric", s[1], s[2]), sym == 0)
  end
  local real, fake = feats(N, 64, 18), feats(M, 64, 19) * 1.2
  local fc, fg = ad.metrics.fid(real, fake), ad.metrics.fid(dev(real), dev(fake))
  check("fid from device features (mean_cov on the device)", math.abs(fg - fc) <= REL * math.abs(fc),
    string.format("%.10g vs %.10g", fg, fc))
end)

case("errors", function()
  local x = feats(100, 8, 20)
  x:narrow(1, 17, 1):narrow(2, 3, 1):fill_(0 / 0)
  local _, ec = pcall(core._knn_radii, x, 3, nil, 0)
  local _, eg = pcall(core._knn_radii, dev(x), 3, nil, 0)
  check("NaN feature: the CPU's message", tostring(eg):find("NaN or Inf (row 17)", 1, true) ~= nil
    and tostring(ec):find("NaN or Inf (row 17)", 1, true) ~= nil, tostring(eg))
  local real, fake = feats(50, 8, 21), feats(40, 8, 22)
  local rr = core._knn_radii(real, 3, nil, 0)
  rr:narrow(1, 5, 1):fill_(-1)
  local _, em = pcall(core._manifold_counts, dev(real), dev(fake), dev(rr), nil, 0)
  check("negative radius: named", tostring(em):find("real radius 5 is -1", 1, true) ~= nil, tostring(em))
  local few = feats(6, 4, 23)
  local _, es = pcall(core._knn_radii, dev(few), 3, dev(ad.tensor({ 0, 0, 0, 0, 1, 2 }, { dtype = "i64" })), 0)
  check("too few distinct neighbours: named", tostring(es):find("distinct neighbours", 1, true) ~= nil, tostring(es))
  if not SELFTEST then
    local big = feats(200, 8, 24)
    local ok, ek = pcall(core._knn_radii, dev(big), 40, nil, 0)
    check("k = 40 > 32 on CUDA: not implemented, said so", not ok and tostring(ek):find("k <= 32", 1, true) ~= nil,
      tostring(ek))
    cmp_radii("ad.metrics.knn_radii k = 40 on device features (runs on the CPU)",
      ad.metrics.knn_radii(dev(big), 40), core._knn_radii(big, 40, nil, 0))
  end
end)

print(string.format("cuda metrics: %d passed, %d failed", n_pass, n_fail))
os.exit(n_fail == 0 and 0 or 1)
