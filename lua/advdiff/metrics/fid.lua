--- advdiff.metrics.fid: Fréchet Inception Distance, Kernel Inception
-- Distance and the Inception Score.
--
-- FID is pytorch-fid's calculate_frechet_distance on f64 statistics
-- (np.mean, np.cov with ddof 1):
--   ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)
-- with tr sqrt(S1 S2) taken as tr sqrt(A S2 A), A = sqrt(S1) from the
-- symmetric eigendecomposition (eigenvalues clamped at 0). A S2 A is
-- symmetric positive semi-definite and has the eigenvalues of S1 S2, so the
-- trace is the sum of the square roots of its (clamped) eigenvalues; unlike
-- scipy's sqrtm this needs no complex arithmetic and stays accurate when the
-- covariances are singular (fewer samples than dimensions).
-- With features in hand and fewer samples than dimensions, the same number
-- comes faster from the Gram form (method "gram"): the non-zero eigenvalues
-- of S1 S2 are those of G G^T / ((n1-1)(n2-1)), G = X1c X2c^T (n1 x n2).
local core = require "advdiff.core"
local U = require "advdiff.metrics.util"

local M = {}

local function trace(a)
  local n = a:shape()[1]
  return (a * core.eye(n, { dtype = "f64" })):sum():item()
end

local function check_stats(fname, s, what)
  if type(s) ~= "table" or core.is_tensor(s) or not core.is_tensor(s.mu) or not core.is_tensor(s.sigma) then
    error(string.format("%s: %s must be features (N, D) or a {mu=, sigma=} table", fname, what), 3)
  end
  local mu, sigma = s.mu:double():cpu(), s.sigma:double():cpu()
  if #mu:shape() ~= 1 then mu = mu:reshape(-1) end
  local d = mu:shape()[1]
  local ss = sigma:shape()
  if #ss ~= 2 or ss[1] ~= d or ss[2] ~= d then
    error(string.format("%s: %s.sigma must be (%d, %d) to match mu, got %s", fname, what, d, d, U.shape_str(sigma)), 3)
  end
  return mu, sigma
end

--- Mean and covariance of features (N, D), as pytorch-fid computes them:
-- {mu = (D) f64, sigma = (D, D) f64, n = N}
function M.stats(feats)
  feats = U.features("stats", "features", feats, true)   -- mean_cov has a CUDA kernel
  local n = feats:shape()[1]
  if n < 2 then error(string.format("stats: need at least 2 feature vectors for a covariance, got %d", n), 2) end
  U.check_finite("stats", "the", feats)
  local mu, sigma = core._mean_cov(feats, 1)
  return { mu = mu, sigma = sigma, n = n }
end

--- sqrt of a symmetric PSD matrix through its eigendecomposition (negative
-- eigenvalues from rounding are clamped to 0)
function M.sqrtm_psd(a)
  local w, v = core.eigh(a)
  local s = w:clamp_min(0):sqrt()
  return (v * s):matmul(v:t())
end

--- pytorch-fid's calculate_frechet_distance. Returns the distance and its terms.
function M.frechet_distance(mu1, sigma1, mu2, sigma2)
  local a, b = check_stats("frechet_distance", { mu = mu1, sigma = sigma1 }, "(mu1, sigma1)")
  local c, d = check_stats("frechet_distance", { mu = mu2, sigma = sigma2 }, "(mu2, sigma2)")
  mu1, sigma1, mu2, sigma2 = a, b, c, d
  if mu1:shape()[1] ~= mu2:shape()[1] then
    error(string.format("frechet_distance: the two statistics differ in dimension (%d vs %d)",
      mu1:shape()[1], mu2:shape()[1]), 2)
  end
  for _, t in ipairs { mu1, sigma1, mu2, sigma2 } do
    local ok = t:isfinite():all():item()
    if not (ok == true or ok == 1) then error("frechet_distance: statistics contain NaN or Inf", 2) end
  end
  local diff = mu1 - mu2
  -- A = V diag(sqrt w) V^T over the numerical range of S1 (eigenvalues above
  -- the rounding level D eps max(w); the rest are zero up to rounding). With
  -- B = V_r diag(sqrt w_r), A S2 A = V_r (B^T S2 B) V_r^T, so its non-zero
  -- eigenvalues are those of the r x r matrix B^T S2 B: the same trace, and a
  -- small eigenproblem when S1 is rank-deficient (fewer samples than dims).
  local dim = mu1:shape()[1]
  local w, v = core.eigh(sigma1)
  local tol = math.max(w:max():item(), 0) * dim * 2.220446049250313e-16
  local r = math.tointeger(w:gt(tol):double():sum():item())
  local tr_covmean = 0
  if r > 0 then
    local b = v:narrow(2, dim - r + 1, r) * w:narrow(1, dim - r + 1, r):sqrt()
    local c = b:t():matmul(sigma2):matmul(b)
    c = (c + c:t()) * 0.5
    tr_covmean = core.eigvalsh(c):clamp_min(0):sqrt():sum():item()
  end
  local terms = {
    diff_sq = (diff * diff):sum():item(),
    trace_sigma1 = trace(sigma1),
    trace_sigma2 = trace(sigma2),
    trace_sqrt_sigma1_sigma2 = tr_covmean,
  }
  local fid = terms.diff_sq + terms.trace_sigma1 + terms.trace_sigma2 - 2 * tr_covmean
  return fid, terms
end

--- FID from features by the Gram form (exact; fast when N < D). ids1/ids2 are unused
-- here (duplicates are legitimate samples for a covariance).
local function fid_gram(x1, x2)
  local n1, n2 = x1:shape()[1], x2:shape()[1]
  local a, b = x1:double(), x2:double()
  local mu1, mu2 = a:mean(1), b:mean(1)
  local ac, bc = a - mu1, b - mu2
  local g = ac:matmul(bc:t())                       -- (n1, n2)
  local gg = n1 <= n2 and g:matmul(g:t()) or g:t():matmul(g)
  gg = (gg + gg:t()) * 0.5
  local lam = core.eigvalsh(gg)
  -- eigenvalues of G G^T are squared singular values: those at the rounding
  -- level (n eps max) are zeros, whose square roots would add noise
  local tol = math.max(lam:max():item(), 0) * lam:numel() * 2.220446049250313e-16
  local keep = lam:gt(tol):double()
  local tr_covmean = (lam:clamp_min(0):sqrt() * keep):sum():item() / math.sqrt((n1 - 1) * (n2 - 1))
  local diff = mu1 - mu2
  local terms = {
    diff_sq = (diff * diff):sum():item(),
    trace_sigma1 = (ac * ac):sum():item() / (n1 - 1),
    trace_sigma2 = (bc * bc):sum():item() / (n2 - 1),
    trace_sqrt_sigma1_sigma2 = tr_covmean,
  }
  return terms.diff_sq + terms.trace_sigma1 + terms.trace_sigma2 - 2 * tr_covmean, terms
end

local function resolve(fname, x, what)
  if type(x) == "string" then return M.load_stats(x), nil end
  if core.is_tensor(x) then
    local f = U.features(fname, what, x, true)   -- for mean_cov; the Gram form moves them
    U.check_finite(fname, what, f)
    if f:shape()[1] < 2 then
      error(string.format("%s: %s needs at least 2 feature vectors for a covariance, got %d", fname, what, f:shape()[1]), 3)
    end
    return nil, f
  end
  if type(x) == "table" and core.is_tensor(x.mu) then return x, nil end
  error(string.format("%s: %s must be features (N, D), a {mu=, sigma=} table or an .npz path, got %s", fname, what,
    type(x)), 3)
end

--- FID between two feature sets (N, D) or statistics {mu=, sigma=} (or paths
-- of .npz files holding mu and sigma). Returns the distance (a number) and
-- its terms. opts.method: "eigen" (default; the covariance route of
-- pytorch-fid) or "gram"/"auto" (features only: the Gram form when N < D).
function M.fid(a, b, opts)
  opts = U.opts("fid", opts)
  local sa, fa = resolve("fid", a, "the first argument")
  local sb, fb = resolve("fid", b, "the second argument")
  if fa and fb and fa:shape()[2] ~= fb:shape()[2] then
    error(string.format("fid: the feature sets differ in dimension (%d vs %d)", fa:shape()[2], fb:shape()[2]), 2)
  end
  local method = opts.method or "eigen"
  if method ~= "eigen" and method ~= "gram" and method ~= "auto" then
    error("fid: option 'method' must be \"eigen\", \"gram\" or \"auto\", got " .. tostring(method), 2)
  end
  if fa and fb and method ~= "eigen" then
    local d = fa:shape()[2]
    if method == "gram" or math.min(fa:shape()[1], fb:shape()[1]) < d then return fid_gram(fa:cpu(), fb:cpu()) end
  end
  -- features were checked by resolve(): straight to the core
  if not sa then local mu, sigma = core._mean_cov(fa, 1); sa = { mu = mu, sigma = sigma } end
  if not sb then local mu, sigma = core._mean_cov(fb, 1); sb = { mu = mu, sigma = sigma } end
  return M.frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
end

--- Save statistics {mu=, sigma=} as an .npz (pytorch-fid's --save-stats layout).
function M.save_stats(path, s)
  local mu, sigma = check_stats("save_stats", s, "stats")
  core.save(path, { mu = mu, sigma = sigma })
end

--- Load {mu=, sigma=} from an .npz (pytorch-fid's or guided-diffusion's layout).
function M.load_stats(path)
  local t = core.load(path)
  if type(t) ~= "table" or not core.is_tensor(t.mu) or not core.is_tensor(t.sigma) then
    error("load_stats: " .. path .. " holds no 'mu' and 'sigma' arrays", 2)
  end
  return { mu = t.mu:double(), sigma = t.sigma:double() }
end

--- guided-diffusion's reference batches (VIRTUAL_imagenet64_labeled.npz and
-- friends): arr_0 (N, H, W, 3) u8 images, mu/sigma (pool_3 statistics of the
-- reference set), mu_s/sigma_s (spatial features). Returns {mu=, sigma=,
-- images=(N, 3, H, W) u8 or nil, labels=arr_1 or nil, mu_s=, sigma_s=}, so
-- ad.metrics.fid(features, ad.metrics.reference_stats(path)) is one call.
-- Note: guided-diffusion computed mu/sigma with the TensorFlow Inception
-- graph; pytorch-fid's port of that graph agrees closely but not bit for bit.
function M.reference_stats(path)
  if type(path) ~= "string" then error("reference_stats: path must be a string", 2) end
  local t = core.load(path)
  if type(t) ~= "table" then error("reference_stats: " .. path .. " is not an .npz archive", 2) end
  local out = {}
  if core.is_tensor(t.mu) and core.is_tensor(t.sigma) then
    out.mu, out.sigma = t.mu:double(), t.sigma:double()
  end
  if core.is_tensor(t.mu_s) and core.is_tensor(t.sigma_s) then
    out.mu_s, out.sigma_s = t.mu_s:double(), t.sigma_s:double()
  end
  if core.is_tensor(t.arr_0) then
    local a = t.arr_0
    local s = a:shape()
    if #s == 4 and s[4] == 3 then a = a:permute(1, 4, 2, 3) end
    out.images = a
  end
  if core.is_tensor(t.arr_1) then out.labels = t.arr_1 end
  if out.mu == nil and out.images == nil then
    error("reference_stats: " .. path .. " holds neither mu/sigma nor arr_0 images", 2)
  end
  return out
end

---------------------------------------------------------------------------- KID

--- unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + coef0)^degree.
-- ids (i64 tensors or nil): rows with equal ids are one point (bootstrap copies)
-- and their pairs are left out like the diagonal.
local function mmd2(x, y, degree, gamma, coef0, idx, idy)
  local function k(a, b) return (a:matmul(b:t()) * gamma + coef0):pow(degree) end
  local function within(a, ids)
    local kk = k(a, a)
    local n = a:shape()[1]
    local keep
    if ids then
      keep = ids:view(n, 1):ne(ids:view(1, n)):double()
    else
      keep = core.ones(n, n, { dtype = "f64" }) - core.eye(n, { dtype = "f64" })
    end
    local cnt = keep:sum():item()
    if cnt == 0 then error("kid: a subset has no two distinct points", 4) end
    return (kk * keep):sum():item() / cnt
  end
  local kxy = k(x, y):mean():item()
  return within(x, idx) + within(y, idy) - 2 * kxy
end

--- Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD^2 with
-- the cubic polynomial kernel, averaged over random subsets (as torch-fidelity
-- and clean-fid compute it). Returns the estimate, its std over the subsets
-- and the per-subset values. opts: subsets=100, subset_size=1000 (capped at
-- the smaller set; when both sets fit, one subset is the whole data), degree=3,
-- gamma=1/D, coef0=1, seed=0.
function M.kid(a, b, opts)
  opts = U.opts("kid", opts)
  a = U.features("kid", "the first feature set", a)
  b = U.features("kid", "the second feature set", b)
  U.check_finite("kid", "the first", a)
  U.check_finite("kid", "the second", b)
  local na, nb, d = a:shape()[1], b:shape()[1], a:shape()[2]
  if b:shape()[2] ~= d then error(string.format("kid: the feature sets differ in dimension (%d vs %d)", d, b:shape()[2]), 2) end
  local subsets = U.posint("kid", "subsets", opts.subsets, 100)
  local m = U.posint("kid", "subset_size", opts.subset_size, 1000, 2)
  m = math.min(m, na, nb)
  if m < 2 then error(string.format("kid: need at least 2 samples in each set, got %d and %d", na, nb), 2) end
  local degree = opts.degree or 3
  local gamma = opts.gamma or 1 / d
  local coef0 = opts.coef0 == nil and 1 or opts.coef0
  local A, B = a:double(), b:double()
  local ida, idb = opts.ids_a, opts.ids_b
  if m == na and m == nb then subsets = 1 end   -- every subset would be the whole data
  local gen = core.Generator(opts.seed or 0)
  local values = {}
  for s = 1, subsets do
    local x, y, ix, iy = A, B, ida, idb
    if m < na then
      local p = core.randperm(na, { generator = gen }):narrow(1, 1, m)
      x = A:index_select(1, p)
      if ida then ix = ida:index_select(1, p) end
    end
    if m < nb then
      local p = core.randperm(nb, { generator = gen }):narrow(1, 1, m)
      y = B:index_select(1, p)
      if idb then iy = idb:index_select(1, p) end
    end
    values[s] = mmd2(x, y, degree, gamma, coef0, ix, iy)
  end
  return U.mean(values), U.std(values), values
end

---------------------------------------------------------------------------- IS

--- Inception Score from logits (N, C), as guided-diffusion's evaluator and
-- improved-gan compute it: per split, exp(mean_i KL(p(y|x_i) || p(y))).
-- Returns the mean over splits and their std. opts: splits=10, or
-- split_size= (guided-diffusion uses 5000 on 50 000 samples: 10 splits).
function M.inception_score_from_logits(logits, opts)
  opts = U.opts("inception_score", opts)
  if not core.is_tensor(logits) or #logits:shape() ~= 2 then
    error("inception_score: logits must be a 2-D tensor (N, classes)", 3)
  end
  local n = logits:shape()[1]
  local lp = core.log_softmax(logits:double():cpu(), 2)
  local ok = lp:isfinite():all():item()
  if not (ok == true or ok == 1) then error("inception_score: logits contain NaN or Inf", 3) end
  local bounds = {}
  if opts.split_size then
    local sz = U.posint("inception_score", "split_size", opts.split_size, 5000)
    for i0 = 1, n, sz do bounds[#bounds + 1] = { i0, math.min(sz, n - i0 + 1) } end
  else
    local splits = U.posint("inception_score", "splits", opts.splits, 10)
    if splits > n then
      error(string.format("inception_score: %d splits need at least %d samples, got %d", splits, splits, n), 3)
    end
    -- improved-gan's split: part k is rows [k n / splits, (k+1) n / splits)
    for k = 0, splits - 1 do
      local lo, hi = (k * n) // splits, ((k + 1) * n) // splits
      bounds[#bounds + 1] = { lo + 1, hi - lo }
    end
  end
  local scores = {}
  for i, bd in ipairs(bounds) do
    local part = lp:narrow(1, bd[1], bd[2])
    local p = part:exp()
    local logpy = p:mean(1, { keepdim = true }):log()
    local kl = (p * (part - logpy)):sum(2):mean():item()
    scores[i] = math.exp(kl)
  end
  return U.mean(scores), U.std(scores), scores
end

--- Logits of the FID network's 1008-way classifier from pool_3 features
-- (N, 2048). guided-diffusion's evaluator multiplies by the softmax layer's
-- weights only (no bias); opts.bias = true adds pytorch-fid's fc.bias.
function M.inception_logits(feats, extractor, opts)
  opts = U.opts("inception_logits", opts)
  if type(extractor) ~= "table" or extractor.fc == nil or not core.is_tensor(extractor.fc.weight) then
    error("inception_logits: the extractor has no fc layer (use ad.models.inception_v3_fid() with weights)", 2)
  end
  local w = extractor.fc.weight:detach():float():cpu()
  local l = feats:float():cpu():matmul(w:t())
  if opts.bias and extractor.fc.bias then l = l + extractor.fc.bias:detach():float():cpu() end
  return l
end

return M
