--- advdiff.metrics.prdc: improved precision and recall (Kynkäänniemi et al.
-- 2019) and density and coverage (Naeem et al. 2020) on feature sets, as
-- clovaai/generative-evaluation-prdc computes them.
--
-- r_k(x) is the distance from x to its k-th nearest neighbour in its own set,
-- x itself excluded. Then, for real features X (N) and fake features Y (M):
--   precision = #{y : exists x, d(y, x) <= r_k(x)} / M
--   recall    = #{x : exists y, d(x, y) <= r_k(y)} / N
--   density   = sum_y #{x : d(y, x) <= r_k(x)} / (k M)
--   coverage  = #{x : exists y, d(x, y) <= r_k(x)} / N
-- The distance work runs in the core (ad._knn_radii, ad._manifold_counts):
-- blocks of bounded memory with exact f64 decisions (core/metrics.h), on the
-- GPU when the features are on one CUDA device (k up to U.CUDA_KNN_MAXK),
-- else on the CPU.
local core = require "advdiff.core"
local U = require "advdiff.metrics.util"

local M = {}

local function prepare(fname, real, fake, k, need_fake_radii)
  local keep = U.same_cuda(real, fake) and k <= U.CUDA_KNN_MAXK
  real = U.features(fname, "real", real, keep)
  fake = U.features(fname, "fake", fake, keep)
  local n, m = real:shape()[1], fake:shape()[1]
  if real:shape()[2] ~= fake:shape()[2] then
    error(string.format("%s: real and fake features differ in dimension (%d vs %d)", fname, real:shape()[2],
      fake:shape()[2]), 3)
  end
  if n <= k then
    error(string.format("%s: need more than k = %d real samples (the k-NN radius excludes the point itself), got %d",
      fname, k, n), 3)
  end
  if need_fake_radii and m <= k then
    error(string.format("%s: need more than k = %d fake samples (the k-NN radius excludes the point itself), got %d",
      fname, k, m), 3)
  end
  U.check_finite(fname, "real", real)
  U.check_finite(fname, "fake", fake)
  return real, fake
end

--- k-NN radii (N) f64 of the rows of x (N, D), each point itself excluded.
-- opts: ids (i64 (N): rows with one id are copies of one point), block_rows.
function M.knn_radii(x, k, opts)
  opts = U.opts("knn_radii", opts)
  k = U.posint("knn_radii", "k", k, 3)
  x = U.features("knn_radii", "x", x, k <= U.CUDA_KNN_MAXK)
  if x:shape()[1] <= k then
    error(string.format("knn_radii: need more than k = %d samples, got %d", k, x:shape()[1]), 2)
  end
  U.check_finite("knn_radii", "the", x)
  return core._knn_radii(x, k, U.to_device_of(opts.ids, x), opts.block_rows or 0)
end

--- All four numbers at once (one pass over each distance matrix).
-- Returns {precision=, recall=, density=, coverage=, real_radii=, fake_radii=, k=}.
-- opts: k=5 (prdc's default), block_rows, real_ids/fake_ids (bootstrap copies),
-- radii = {real=, fake=} to reuse radii computed before.
function M.prdc(real, fake, opts)
  opts = U.opts("prdc", opts)
  local k = U.posint("prdc", "k", opts.k, 5)
  local recall = not opts._no_recall
  real, fake = prepare(opts._fname or "prdc", real, fake, k, recall)
  local block = opts.block_rows or 0
  local given = opts.radii or {}
  local rr = U.to_device_of(given.real, real) or core._knn_radii(real, k, U.to_device_of(opts.real_ids, real), block)
  local rf = recall and (U.to_device_of(given.fake, fake)
    or core._knn_radii(fake, k, U.to_device_of(opts.fake_ids, fake), block)) or nil
  local fake_in_real, real_in_real, real_in_fake = core._manifold_counts(real, fake, rr, rf, block)
  local n, m = real:shape()[1], fake:shape()[1]
  local function frac_pos(c) return c:gt(0):double():sum():item() / c:numel() end
  return {
    precision = frac_pos(fake_in_real),
    recall = recall and frac_pos(real_in_fake) or nil,
    density = fake_in_real:double():sum():item() / (k * m),
    coverage = frac_pos(real_in_real),
    real_radii = rr, fake_radii = rf, k = k, n_real = n, n_fake = m,
  }
end

--- Improved precision and recall (k = 3 by default, as in the paper).
-- Returns precision, recall (numbers) and the full prdc table.
function M.precision_recall(real, fake, opts)
  opts = U.opts("precision_recall", opts)
  local o = {}
  for key, v in pairs(opts) do o[key] = v end
  o.k = U.posint("precision_recall", "k", opts.k, 3)
  o._fname = "precision_recall"
  local r = M.prdc(real, fake, o)
  return r.precision, r.recall, r
end

--- Density and coverage (k = 5 by default, as in the paper).
-- Returns density, coverage (numbers) and the full prdc table.
function M.density_coverage(real, fake, opts)
  opts = U.opts("density_coverage", opts)
  local o = {}
  for key, v in pairs(opts) do o[key] = v end
  o.k = U.posint("density_coverage", "k", opts.k, 5)
  o._fname = "density_coverage"
  o._no_recall = true   -- density and coverage need only the real radii
  local r = M.prdc(real, fake, o)
  return r.density, r.coverage, r
end

return M
