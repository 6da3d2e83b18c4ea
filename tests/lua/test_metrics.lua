-- test_metrics.lua: the evaluation suite (advdiff.metrics and the core's
-- metric ops) against fixtures/metrics (written by OpenCV, pytorch-fid and
-- NumPy/prdc), naive references written here in plain Lua, and edge cases.
local ad = require "advdiff"
local T = require "advdiff.testing"
local metrics = ad.metrics

local fixtures_dir = T.fixtures_dir
local FIX = fixtures_dir() .. "/metrics/"
local function L(name) return (ad.load(FIX .. name)) end

local function rel(a, b) return math.abs(a - b) / math.max(math.abs(b), 1e-300) end
local function expect_error(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  assert(tostring(err):find(pattern), "error '" .. tostring(err) .. "' does not match '" .. pattern .. "'")
end
local tmpdir = T.tmpdir

-- plain-Lua references --------------------------------------------------------
local function rows_of(x)   -- (N, D) -> Lua rows of f64 numbers
  return x:double():tolist()
end
local function dist(a, b)
  local s = 0
  for t = 1, #a do s = s + (a[t] - b[t]) ^ 2 end
  return math.sqrt(s)
end
local function kth_other(rows, i, k, ids)
  local d = {}
  for j = 1, #rows do
    if j ~= i and not (ids and ids[j] == ids[i]) then d[#d + 1] = dist(rows[i], rows[j]) end
  end
  table.sort(d)
  return d[k]
end
local function naive_prdc(real, fake, k)
  local R, F = rows_of(real), rows_of(fake)
  local rr, rf = {}, {}
  for i = 1, #R do rr[i] = kth_other(R, i, k) end
  for j = 1, #F do rf[j] = kth_other(F, j, k) end
  local prec, dens, rec, cov = 0, 0, 0, 0
  for j = 1, #F do
    local c = 0
    for i = 1, #R do if dist(F[j], R[i]) <= rr[i] then c = c + 1 end end
    if c > 0 then prec = prec + 1 end
    dens = dens + c
  end
  for i = 1, #R do
    local inf, incov = false, false
    for j = 1, #F do
      local d = dist(R[i], F[j])
      if d <= rf[j] then inf = true end
      if d <= rr[i] then incov = true end
    end
    if inf then rec = rec + 1 end
    if incov then cov = cov + 1 end
  end
  return prec / #F, rec / #R, dens / (k * #F), cov / #R, rr, rf
end

------------------------------------------------------------------------------ sharpness

test("sharpness: OpenCV gray (float path) is bit-exact against cv2.cvtColor", function()
  local g = metrics.gray(L("sharp_images.npy"))
  assert(g:dtype() == "f32")
  local ref = L("sharp_gray.npy")
  assert(g:ne(ref):double():sum():item() == 0, "gray differs from cv2.cvtColor")
end)

test("sharpness: per-image Laplacian variance and mean match cv2 (float path, rel 1e-5)", function()
  local imgs = L("sharp_images.npy")
  local mean, values = metrics.sharpness(imgs)
  assert(type(mean) == "number" and ad.is_tensor(values) and values:dtype() == "f64")
  T.assert_close(values, L("sharp_values.npy"), { atol = 0, rtol = 1e-5 })
  assert(rel(mean, L("sharp_mean.npy"):item()) < 1e-5)
  -- a [-1, 1] batch with range = {-1, 1} is the same
  local m2 = metrics.sharpness(imgs * 2 - 1, { range = { -1, 1 } })
  assert(rel(m2, mean) < 1e-5)
  -- a non-contiguous view
  local perm = imgs:permute(1, 2, 4, 3):transpose(3, 4)
  T.assert_close(select(2, metrics.sharpness(perm)), values, { atol = 0, rtol = 1e-12 })
end)

test("sharpness: one-channel batches (N, 1, H, W) and (N, H, W)", function()
  local gray = L("sharp_gray.npy")
  local _, v3 = metrics.sharpness(gray)
  local _, v4 = metrics.sharpness(gray:unsqueeze(2))
  T.assert_close(v3, L("sharp_values.npy"), { atol = 0, rtol = 1e-5 })
  T.assert_close(v4, v3, { atol = 0, rtol = 0 })
end)

test("sharpness: u8 path (fixed-point cvtColor) is exact", function()
  local u8 = (L("sharp_images.npy") * 255):round():to("u8")
  local g = metrics.gray(u8)
  assert(g:dtype() == "u8")
  assert(g:ne(L("sharp_u8_gray.npy")):double():sum():item() == 0, "u8 gray differs from cv2.cvtColor")
  local mean, values = metrics.sharpness(u8)
  T.assert_close(values, L("sharp_u8_values.npy"), { atol = 0, rtol = 1e-12 })
  local ref = L("sharp_u8_values.npy"):mean():item()
  assert(rel(mean, ref) < 1e-12)
end)

test("sharpness: Laplacian with BORDER_REFLECT_101 against a plain-Lua reference", function()
  local g = ad.rand(2, 5, 7, { dtype = "f64", generator = ad.Generator(3) })
  local lap = metrics.laplacian(g)
  local x = g:tolist()
  local function refl(i, n) if i < 1 then return 2 - i elseif i > n then return 2 * n - i end return i end
  for b = 1, 2 do
    for i = 1, 5 do
      for j = 1, 7 do
        local v = x[b][refl(i - 1, 5)][j] + x[b][refl(i + 1, 5)][j] + x[b][i][refl(j - 1, 7)]
          + x[b][i][refl(j + 1, 7)] - 4 * x[b][i][j]
        local got = lap:_getflat(((b - 1) * 5 + (i - 1)) * 7 + j)
        assert(math.abs(got - v) < 1e-12, string.format("laplacian at %d,%d,%d: %g vs %g", b, i, j, got, v))
      end
    end
  end
end)

test("sharpness: bad input", function()
  expect_error("1 or 3 channels", metrics.sharpness, ad.rand(2, 2, 8, 8))
  expect_error("at least 2x2", metrics.sharpness, ad.rand(2, 3, 1, 8))
  expect_error("%(N, C, H, W%)", metrics.sharpness, ad.rand(8, 8))
  local x = ad.rand(2, 3, 8, 8)
  x:_setflat(5, 0 / 0)
  expect_error("NaN", metrics.sharpness, x)
end)

------------------------------------------------------------------------------ FID

test("fid: fid64 from features, from {mu, sigma} and statistics equal np.mean/np.cov", function()
  local f1, f2 = L("fid64_feats1.npy"), L("fid64_feats2.npy")
  local ref = L("fid64_fid.npy"):item()
  local fid = metrics.fid(f1, f2)
  assert(type(fid) == "number")
  assert(rel(fid, ref) < 1e-6, string.format("fid64 %.12g vs %.12g", fid, ref))
  local s1, s2 = metrics.stats(f1), metrics.stats(f2)
  T.assert_close(s1.mu, L("fid64_mu1.npy"), { atol = 1e-14, rtol = 1e-12 })
  T.assert_close(s1.sigma, L("fid64_sigma1.npy"), { atol = 1e-14, rtol = 1e-10 })
  T.assert_close(s2.sigma, L("fid64_sigma2.npy"), { atol = 1e-14, rtol = 1e-10 })
  local fs = metrics.fid({ mu = L("fid64_mu1.npy"), sigma = L("fid64_sigma1.npy") },
    { mu = L("fid64_mu2.npy"), sigma = L("fid64_sigma2.npy") })
  assert(rel(fs, ref) < 1e-6)
  assert(rel(metrics.fid(f1, f2, { method = "gram" }), ref) < 1e-6)
  -- a non-contiguous f64 view of the same features
  local f1t = f1:double():t():contiguous():t()
  assert(rel(metrics.fid(f1t, f2), ref) < 1e-6)
end)

test("fid: fid2048 (rank-deficient 2048x2048 covariances), eigen and Gram routes", function()
  local f1, f2 = L("fid2048_feats1.npy"), L("fid2048_feats2.npy")
  local ref = L("fid2048_fid.npy"):item()
  local fid, terms = metrics.fid(f1, f2)
  assert(rel(fid, ref) < 1e-5, string.format("fid2048 %.12g vs %.12g", fid, ref))
  assert(rel(terms.trace_sqrt_sigma1_sigma2, 781.7422230646066) < 1e-5)
  local fg = metrics.fid(f1, f2, { method = "gram" })
  assert(rel(fg, ref) < 1e-5, string.format("gram %.12g vs %.12g", fg, ref))
  assert(rel(fg, fid) < 1e-9)
end)

test("fid: identical sets give 0; edge cases and errors", function()
  local x = ad.randn(50, 8, { generator = ad.Generator(5) })
  assert(math.abs(metrics.fid(x, x)) < 1e-9)
  assert(math.abs(metrics.fid(x, x:clone(), { method = "gram" })) < 1e-9)
  -- a shift of the mean by c in every dimension adds D c^2
  local fid = metrics.fid(x, x + 0.5)
  assert(math.abs(fid - 8 * 0.25) < 1e-6, fid)
  local bad = x:clone()
  bad:_setflat(17, 0 / 0)
  expect_error("NaN or Inf %(row 3", metrics.fid, bad, x)
  expect_error("differ in dimension", metrics.fid, x, ad.randn(50, 9))
  expect_error("at least 2 feature vectors", metrics.fid, x:narrow(1, 1, 1), x)
  expect_error("sigma must be %(8, 8%)", metrics.fid, { mu = ad.zeros(8), sigma = ad.eye(7) }, x)
end)

test("fid: statistics saved to and loaded from .npz; guided-diffusion reference batches", function()
  local dir = tmpdir()
  local f1, f2 = L("fid64_feats1.npy"), L("fid64_feats2.npy")
  local s1 = metrics.stats(f1)
  metrics.save_stats(dir .. "/s1.npz", s1)
  local back = metrics.load_stats(dir .. "/s1.npz")
  T.assert_close(back.sigma, s1.sigma, { atol = 0, rtol = 0 })
  local ref = L("fid64_fid.npy"):item()
  assert(rel(metrics.fid(dir .. "/s1.npz", f2), ref) < 1e-6)
  -- a VIRTUAL_imagenet64_labeled.npz-style file: arr_0 (N, H, W, 3) u8, mu, sigma
  local imgs = (ad.rand(3, 8, 8, 3) * 255):floor():to("u8")
  ad.save(dir .. "/VIRTUAL_tiny.npz", { arr_0 = imgs, mu = s1.mu, sigma = s1.sigma })
  local rs = metrics.reference_stats(dir .. "/VIRTUAL_tiny.npz")
  assert(table.concat(rs.images:shape(), ",") == "3,3,8,8", "images come back as (N, 3, H, W)")
  assert(rs.images:ne(imgs:permute(1, 4, 2, 3)):double():sum():item() == 0)
  assert(rel(metrics.fid(rs, f2), ref) < 1e-6)
  os.execute("rm -rf '" .. dir .. "'")
end)

test("eigh: LAPACK dsyevd through OpenBLAS (ascending values, orthonormal vectors)", function()
  local a = ad.randn(7, 7, { dtype = "f64", generator = ad.Generator(2) })
  a = a + a:t()
  local w, v = ad.eigh(a)
  for i = 2, 7 do assert(w:_getflat(i) >= w:_getflat(i - 1)) end
  T.assert_close((v * w):matmul(v:t()), a, { atol = 1e-12, rtol = 0 })
  T.assert_close(v:t():matmul(v), ad.eye(7, { dtype = "f64" }), { atol = 1e-12, rtol = 0 })
  T.assert_close(ad.eigvalsh(a), w, { atol = 1e-12, rtol = 0 })
  local s = metrics.sqrtm_psd(a:matmul(a:t()))
  T.assert_close(s:matmul(s), a:matmul(a:t()), { atol = 1e-9, rtol = 0 })
  expect_error("square matrix", ad.eigh, ad.zeros(3, 4, { dtype = "f64" }))
end)

------------------------------------------------------------------------------ precision / recall

local CASES = { "pr_near", "pr_narrow", "pr_wide", "pr2048" }

test("precision/recall (k=3, k=5) and density/coverage: every pr_* case exactly", function()
  for _, c in ipairs(CASES) do
    local real, fake = L(c .. "_real.npy"), L(c .. "_fake.npy")
    local res = L(c .. "_results.npy")
    for row, k in ipairs { 3, 5 } do
      local want = {}
      for col = 1, 4 do want[col] = res:_getflat((row - 1) * 4 + col) end
      local p, r = metrics.precision_recall(real, fake, { k = k })
      local d, cv = metrics.density_coverage(real, fake, { k = k })
      local got = { p, r, d, cv }
      for col = 1, 4 do
        assert(math.abs(got[col] - want[col]) < 1e-12, string.format("%s k=%d column %d: %.15g vs %.15g", c, k,
          col, got[col], want[col]))
      end
    end
  end
end)

test("knn radii: the k=3 debug files, and row blocks of any size give the same radii", function()
  for _, c in ipairs(CASES) do
    for _, set in ipairs { "real", "fake" } do
      local x = L(c .. "_" .. set .. ".npy")
      local want = L(c .. "_" .. set .. "_radii_k3.npy")
      T.assert_close(metrics.knn_radii(x, 3), want, { atol = 0, rtol = 1e-12 })
    end
  end
  local x = L("pr_near_real.npy")
  T.assert_close(metrics.knn_radii(x, 3, { block_rows = 7 }), L("pr_near_real_radii_k3.npy"), { atol = 0, rtol = 1e-12 })
  local p1 = metrics.precision_recall(x, L("pr_near_fake.npy"), { block_rows = 13 })
  assert(p1 == 0.55)
end)

test("precision/recall: exact decisions despite f32 cancellation (large offsets) vs plain Lua f64", function()
  local g = ad.Generator(11)
  -- features far from the origin: ||a||^2 + ||b||^2 - 2ab in f32 alone would cancel badly
  local real = ad.randn(40, 16, { generator = g }) * 0.01 + 1000
  local fake = ad.randn(30, 16, { generator = g }) * 0.012 + 1000.002
  local p, r, d, c, rr, rf = naive_prdc(real, fake, 3)
  local res = metrics.prdc(real, fake, { k = 3 })
  assert(res.precision == p and res.recall == r and math.abs(res.density - d) < 1e-12 and res.coverage == c,
    string.format("got %g %g %g %g, want %g %g %g %g", res.precision, res.recall, res.density, res.coverage, p, r, d, c))
  for i = 1, #rr do assert(rel(res.real_radii:_getflat(i), rr[i]) < 1e-12) end
  for j = 1, #rf do assert(rel(res.fake_radii:_getflat(j), rf[j]) < 1e-12) end
  -- f64 inputs take the same path
  local res64 = metrics.prdc(real:double(), fake:double(), { k = 3 })
  assert(res64.precision == res.precision and res64.recall == res.recall)
  -- a non-contiguous view
  local pv = metrics.precision_recall(real:t():contiguous():t(), fake, { k = 3 })
  assert(pv == p)
end)

test("knn radii with ids: copies of one point are not each other's neighbours", function()
  local x = ad.randn(12, 5, { dtype = "f64", generator = ad.Generator(4) })
  local idx = { 0, 0, 0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11 }
  local ids = ad.tensor(idx, { dtype = "i64" })
  local xs = x:index_select(1, ids)
  local r = metrics.knn_radii(xs, 3, { ids = ids })
  local rows = rows_of(xs)
  local lid = {}
  for i, v in ipairs(idx) do lid[i] = v end
  for i = 1, #idx do
    assert(rel(r:_getflat(i), kth_other(rows, i, 3, lid)) < 1e-12)
  end
  -- k above the tiled path's limit (64) takes the row-block path
  local y = ad.randn(80, 6, { dtype = "f64", generator = ad.Generator(5) })
  local yr = rows_of(y)
  local r70 = metrics.knn_radii(y, 70, { block_rows = 30 })
  local r70i = metrics.knn_radii(xs, 13, { ids = ids })
  for i = 1, 80, 7 do assert(rel(r70:_getflat(i), kth_other(yr, i, 70)) < 1e-12) end
  for i = 1, #idx do assert(rel(r70i:_getflat(i), kth_other(rows, i, 13, lid)) < 1e-12) end
  -- without ids a copy is a neighbour at distance 0
  assert(metrics.knn_radii(xs:narrow(1, 1, 3):clone(), 2):_getflat(1) == 0)
end)

test("precision/recall: identical sets give 1, disjoint sets 0", function()
  local x = ad.randn(60, 10, { generator = ad.Generator(8) })
  local p, r = metrics.precision_recall(x, x, { k = 3 })
  assert(p == 1 and r == 1)
  local d, c = metrics.density_coverage(x, x, { k = 5 })
  assert(c == 1 and d >= 1, d)
  local far = x + 100
  p, r = metrics.precision_recall(x, far)
  d, c = metrics.density_coverage(x, far)
  assert(p == 0 and r == 0 and d == 0 and c == 0)
end)

test("precision/recall: fewer samples than k, NaN, shapes", function()
  local x = ad.randn(10, 4)
  expect_error("need more than k = 3 real samples", metrics.precision_recall, x:narrow(1, 1, 3), x)
  expect_error("need more than k = 3 fake samples", metrics.precision_recall, x, x:narrow(1, 1, 2))
  expect_error("need more than k = 5 real samples", metrics.density_coverage, x:narrow(1, 1, 5), x)
  expect_error("need more than k = 3 samples", metrics.knn_radii, x:narrow(1, 1, 3), 3)
  local bad = x:clone()
  bad:_setflat(9, 1 / 0)
  expect_error("fake features contain NaN or Inf %(row 3", metrics.precision_recall, x, bad)
  bad:_setflat(9, 0 / 0)
  expect_error("real features contain NaN or Inf", metrics.density_coverage, bad, x)
  expect_error("differ in dimension", metrics.precision_recall, x, ad.randn(10, 5))
  expect_error("2%-D %(N, D%)", metrics.precision_recall, ad.randn(10), x)
  expect_error("option 'k' must be >= 1", metrics.precision_recall, x, x, { k = 0 })
  -- the core op's own checks
  expect_error("knn_radii: need more than k", ad._knn_radii, x:narrow(1, 1, 2), 2)
  expect_error("ids must have shape %[10%]", ad._knn_radii, x, 2, ad.zeros(9, { dtype = "i64" }))
end)

test("cdist: Euclidean distances against plain Lua", function()
  local a = ad.randn(5, 3, { generator = ad.Generator(1) }) + 10
  local b = ad.randn(4, 3, { generator = ad.Generator(2) })
  local d = ad.cdist(a, b)
  local A, B = rows_of(a), rows_of(b)
  for i = 1, 5 do for j = 1, 4 do
    assert(math.abs(d:_getflat((i - 1) * 4 + j) - dist(A[i], B[j])) < 1e-9)
  end end
end)

------------------------------------------------------------------------------ KID, IS

test("kid: unbiased polynomial MMD against a hand computation; subsets, seeds, std", function()
  -- X = {1, 2}, Y = {0, 1} in 1-d: k(x, y) = (x y + 1)^3
  local X = ad.tensor({ { 1 }, { 2 } }, { dtype = "f64" })
  local Y = ad.tensor({ { 0 }, { 1 } }, { dtype = "f64" })
  local kxx = 2 * (1 * 2 + 1) ^ 3 / 2           -- off-diagonal mean
  local kyy = 2 * (0 * 1 + 1) ^ 3 / 2
  local kxy = ((1 * 0 + 1) ^ 3 + (1 * 1 + 1) ^ 3 + (2 * 0 + 1) ^ 3 + (2 * 1 + 1) ^ 3) / 4
  local est, std = metrics.kid(X, Y)
  assert(math.abs(est - (kxx + kyy - 2 * kxy)) < 1e-12, est)
  assert(std == 0)
  local g = ad.Generator(9)
  local a, b = ad.randn(40, 6, { generator = g }), ad.randn(50, 6, { generator = g }) + 0.3
  local e1, s1, v1 = metrics.kid(a, b, { subsets = 7, subset_size = 20, seed = 3 })
  local e2 = metrics.kid(a, b, { subsets = 7, subset_size = 20, seed = 3 })
  assert(e1 == e2 and #v1 == 7 and s1 > 0)
  assert(e1 > 0)
  expect_error("NaN or Inf", metrics.kid, a, b:clone():fill_(0 / 0))
end)

test("inception_score: uniform and confident predictions; splits", function()
  local u = ad.zeros(20, 10)
  local m, s = metrics.inception_score(u)
  assert(math.abs(m - 1) < 1e-12 and s < 1e-12)
  -- 8 samples, each confidently a different class: IS = number of samples per split
  local l = ad.full({ 8, 1008 }, -50.0)
  for i = 1, 8 do l:_setflat((i - 1) * 1008 + i * 7, 50) end
  assert(math.abs(metrics.inception_score(l, { splits = 1 }) - 8) < 1e-6)
  assert(math.abs(metrics.inception_score(l, { splits = 2 }) - 4) < 1e-6)
  assert(math.abs(metrics.inception_score(l, { split_size = 4 }) - 4) < 1e-6)
  expect_error("splits need at least", metrics.inception_score, l, { splits = 9 })
end)

------------------------------------------------------------------------------ features

test("features: batched extraction equals one pass; modules, functions, lists, u8, progress", function()
  local nn = ad.nn
  ad.manual_seed(0)
  local net = nn.Sequential(nn.Conv2d(3, 4, 3, { padding = 1 }), nn.AdaptiveAvgPool2d(2), nn.Flatten())
  local x = ad.rand(7, 3, 8, 8, { generator = ad.Generator(6) })
  local whole = ad.no_grad(function() return net(x) end)
  local calls, last = 0, nil
  local f = metrics.features(x, net, { batch_size = 3, progress = function(done, total) calls = calls + 1; last = { done, total } end })
  assert(table.concat(f:shape(), ",") == "7,16" and f:dtype() == "f32" and not f.requires_grad)
  T.assert_close(f, whole, { atol = 1e-6, rtol = 1e-5 })
  assert(calls == 3 and last[1] == 7 and last[2] == 7)
  -- a function extractor returning (N, D, 1, 1), a list of batches, u8 images
  local fn = function(b) return ad.adaptive_avg_pool2d(b, 1, 1) end
  local f2 = metrics.features({ x:narrow(1, 1, 4), x:narrow(1, 5, 3) }, fn, { progress = false })
  T.assert_close(f2, x:mean({ 3, 4 }), { atol = 1e-6, rtol = 1e-5 })
  local u8 = (x * 255):floor():to("u8")
  local f3 = metrics.features(u8, fn, { progress = false })
  T.assert_close(f3, (u8:float() / 255):mean({ 3, 4 }), { atol = 1e-6, rtol = 1e-5 })
  -- a module with features() (the FID network's interface) is called through it
  local ex = { features = function(self, b) return b:mean({ 3, 4 }) * 2 end }
  T.assert_close(metrics.features(x, ex, { progress = false }), x:mean({ 3, 4 }) * 2, { atol = 1e-6, rtol = 1e-5 })
  expect_error("an extractor is required", metrics.features, x, nil)
  expect_error("%(N, D%) features", metrics.features, x, function(b) return b:reshape(-1) end, { progress = false })
end)

test("features: the FID InceptionV3 from a weights path (inception_fid fixture), IS from its fc", function()
  local dir = fixtures_dir() .. "/inception_fid/"
  local net = metrics.inception(dir .. "pt_inception_fid_random_fp16.pth")
  assert(metrics.inception(dir .. "pt_inception_fid_random_fp16.pth") == net, "cached per path")
  local x = L("../inception_fid/input.npy")
  local f = metrics.features(x, dir .. "pt_inception_fid_random_fp16.pth", { batch_size = 3, progress = false })
  local ref = L("../inception_fid/features.npy")
  local err = (f - ref):abs():max():item() / ref:abs():max():item()
  assert(err <= 1e-3, "features max|diff|/max|ref| " .. err)
  local logits = metrics.inception_logits(f, net)
  assert(table.concat(logits:shape(), ",") == "4,1008")
  T.assert_close(logits, f:matmul(net.fc.weight:t()), { atol = 1e-5, rtol = 1e-5 })
  local is = metrics.inception_score(logits, { splits = 2 })
  assert(is >= 1)
end)

------------------------------------------------------------------------------ spectra, plots, report

test("radial power spectrum: a cosine peaks at its frequency; white noise is flat", function()
  local n = 32
  local t = {}
  for i = 1, n do
    t[i] = {}
    for j = 1, n do t[i][j] = 0.5 + 0.25 * math.cos(2 * math.pi * 5 * (j - 1) / n) end
  end
  local img = ad.tensor(t):view(1, 1, n, n)
  local s, per, freqs = metrics.radial_power_spectrum(img)
  assert(s:numel() == 17 and per:shape()[1] == 1 and math.abs(freqs:_getflat(6) - 5 / 32) < 1e-12)
  local best, bi = -1, 0
  for i = 2, 17 do if s:_getflat(i) > best then best, bi = s:_getflat(i), i end end
  assert(bi == 6, "peak at bin " .. (bi - 1))
  local noise = ad.rand(16, 1, n, n, { generator = ad.Generator(1) })
  local sn = metrics.radial_power_spectrum(noise)
  local lo, hi = math.huge, 0
  for i = 3, 17 do lo, hi = math.min(lo, sn:_getflat(i)), math.max(hi, sn:_getflat(i)) end
  assert(hi / lo < 1.6, "white noise spectrum is not flat: " .. hi / lo)
end)

test("discriminator_scores: mean sigmoid per set, labels passed through", function()
  local seen = {}
  local D = function(x, y) seen[#seen + 1] = y; return x:mean({ 2, 3, 4 }) end
  local xr, xa = ad.randn(5, 3, 4, 4), ad.randn(6, 3, 4, 4)
  local r = metrics.discriminator_scores(D, { real = xr, a = xa },
    { labels = { real = ad.zeros(5, { dtype = "i64" }), a = ad.ones(6, { dtype = "i64" }) }, batch_size = 4 })
  assert(math.abs(r.real.mean - xr:mean({ 2, 3, 4 }):double():sigmoid():mean():item()) < 1e-7)
  assert(r.a.scores:numel() == 6 and #seen == 4)
  expect_error("one logit per image", metrics.discriminator_scores, function(x) return x end, { real = xr })
end)

test("compare: the table with intervals, warnings, Markdown, JSON and PNGs", function()
  local g = ad.Generator(21)
  local N = 40
  local real = ad.rand(N, 3, 16, 16, { generator = g }) * 2 - 1
  local a = ad.avg_pool2d(ad.pad(real, { 1, 1, 1, 1 }, { mode = "reflect" }), 3, { stride = 1 })
  local b = real + ad.randn(N, 3, 16, 16, { generator = g }) * 0.1
  local ex = function(x) return ad.adaptive_avg_pool2d(x, 2, 2):flatten(2) end
  local D = function(x) return x:mean({ 2, 3, 4 }) end
  local dir = tmpdir()
  local res = metrics.compare { real = real, a = a, b = b, extractor = ex, D = D, bootstrap = 20, seed = 1,
    progress = false, out = dir, kid = { subsets = 5 } }
  for _, key in ipairs { "sharpness", "sharpness_gap", "precision", "recall", "density", "coverage", "fid", "kid", "d_score" } do
    local e = res.metrics[key]
    assert(e, "missing metric " .. key)
    assert(e.ci_a and e.ci_b and e.ci_a[1] <= e.a + 1e-12 and e.a <= e.ci_a[2] + 1e-12, key .. ": interval does not hold the estimate")
    assert(math.abs(e.change_pct - (e.b - e.a) / math.abs(e.a) * 100) < 1e-9 or e.a == 0)
  end
  assert(res.metrics.sharpness.real and res.metrics.sharpness.ci_real)
  assert(math.abs(res.metrics.sharpness_gap.a - math.abs(res.metrics.sharpness.a - res.metrics.sharpness.real)) < 1e-12)
  local s = select(1, metrics.sharpness(a, { range = { -1, 1 } }))
  assert(rel(res.metrics.sharpness.a, s) < 1e-12)
  assert(res.metrics.inception_score == nil, "IS needs the Inception fc")
  -- N = 40 is below every k-NN/FID threshold: the report says so
  assert(res.metrics.precision.warning and res.metrics.fid.warning and not res.metrics.d_score.warning)
  assert(res.markdown:find("| Precision %(k=3%) ↑ |") and res.markdown:find("## Notes"))
  assert(res.markdown:find("N = 40 < 10000"))
  local fj = io.open(dir .. "/results.json"):read("a")
  assert(fj:find('"precision"') and fj:find('"ci_a"') and fj:find('"spectrum"'))
  assert(io.open(dir .. "/table.md"):read("a") == res.markdown)
  local img = ad.image.load(dir .. "/samples.png")
  assert(img:shape()[1] == 3 and img:shape()[3] > img:shape()[2])
  local sp = ad.image.load(dir .. "/spectrum.png")
  assert(sp:shape()[2] == 460 and sp:shape()[3] == 760)
  -- the same seed gives the same intervals
  local res2 = metrics.compare { real = real, a = a, b = b, extractor = ex, bootstrap = 20, seed = 1, progress = false,
    kid = { subsets = 5 } }
  assert(res2.metrics.precision.ci_a[1] == res.metrics.precision.ci_a[1])
  assert(res2.metrics.d_score == nil)
  -- a u8 real set beside float samples is measured on the same [0, 1] scale
  local real_u8 = ((real + 1) * 127.5):round():to("u8")
  local res3 = metrics.compare { real = real_u8, a = a, b = b, extractor = ex, bootstrap = 0, progress = false,
    kid = { subsets = 5 } }
  assert(rel(res3.metrics.sharpness.real, res.metrics.sharpness.real) < 0.02)
  assert(res3.metrics.precision.ci_a == nil and res3.markdown:find("no intervals"))
  -- an extractor with the FID network's interface (features() and a 1008-way-style fc) adds IS
  local inc = { features = function(_, x) return ad.adaptive_avg_pool2d(x, 2, 2):flatten(2) end,
    fc = { weight = ad.randn(10, 12, { generator = g }) } }
  local res4 = metrics.compare { real = real, a = a, b = b, extractor = inc, bootstrap = 5, progress = false,
    kid = { subsets = 2 }, is_splits = 2 }
  local is = res4.metrics.inception_score
  assert(is and is.real and is.a >= 1 and is.ci_b, "inception score row")
  local want = metrics.inception_score(metrics.inception_logits(metrics.features((a + 1) / 2, inc, { progress = false }), inc),
    { splits = 2 })
  assert(rel(is.a, want) < 1e-6)
  os.execute("rm -rf '" .. dir .. "'")
end)

test("sample_models: the same x_T, labels and step noise for every model; flat_results", function()
  local d = ad.diffusion.create { steps = 100, noise_schedule = "linear", timestep_respacing = "5" }
  local seen = {}
  -- two "models" predicting eps = c * x: the same c must give the same samples
  local function model(c)
    return function(x, t, kw)
      seen[#seen + 1] = kw.y
      return x * c
    end
  end
  local shape = { 3, 1, 4, 4 }
  local y = ad.tensor({ 1, 2, 3 }, { dtype = "i64" })
  local s = metrics.sample_models(d, { model(0.1), model(0.1), model(0.3) }, { shape = shape, y = y, seed = 7 })
  assert(#s == 3)
  assert((s[1] - s[2]):abs():max():item() == 0, "the same model twice must give the same samples")
  assert((s[1] - s[3]):abs():max():item() > 1e-3, "different models must differ")
  assert(#seen > 0)
  for _, v in ipairs(seen) do assert(rawequal(v, y), "the labels reach every call") end
  -- the same seed again: the same samples; another seed: others
  local again = metrics.sample_models(d, { model(0.1) }, { shape = shape, y = y, seed = 7 })
  assert((again[1] - s[1]):abs():max():item() == 0)
  local other = metrics.sample_models(d, { model(0.1) }, { shape = shape, y = y, seed = 8 })
  assert((other[1] - s[1]):abs():max():item() > 1e-3)
  expect_error("opts.shape", function() return metrics.sample_models(d, { model(0.1) }, {}) end)
  expect_error("list of generators", function() return metrics.sample_models(d, {}, { shape = shape }) end)

  local r = metrics.flat_results({ sharpness = { a = 1, b = 2, real = 3, change_pct = 100, ci_a = { 0.9, 1.1 } },
                                   fid = { a = 10, b = 8, change_pct = -20 } }, { n_eval = 5 })
  assert(r.n_eval == 5 and r.sharpness == 2 and r.fid == 8)
  assert(r.pretrained.sharpness == 1 and r.pretrained.fid == 10)
  assert(r.real.sharpness == 3 and r.real.fid == nil)
  assert(r.change_pct.fid == -20 and r.ci.sharpness.pretrained[2] == 1.1)
end)
