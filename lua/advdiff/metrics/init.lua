--- advdiff.metrics: the evaluation suite.
--
--   local ad = require "advdiff"
--   local mean, per_image = ad.metrics.sharpness(images)            -- OpenCV's Laplacian variance
--   local net = ad.metrics.inception("pt_inception-2015-12-05-6726825d.pth")
--   local fr, ff = ad.metrics.features(real, net), ad.metrics.features(fake, net)
--   local fid = ad.metrics.fid(fr, ff)                               -- pytorch-fid's number
--   local p, r = ad.metrics.precision_recall(fr, ff, {k = 3})
--   local d, c = ad.metrics.density_coverage(fr, ff, {k = 5})
--   local kid, kid_std = ad.metrics.kid(fr, ff)
--   local is, is_std = ad.metrics.inception_score(fake, {extractor = net})
--   local fid_ref = ad.metrics.fid(ff, ad.metrics.reference_stats("VIRTUAL_imagenet64_labeled.npz"))
--   local res = ad.metrics.compare{real = x, a = s0, b = s1, extractor = net, D = disc, out = "eval/"}
--   local s = ad.metrics.sample_models(d, {G0, G1}, {shape = shape, y = y})   -- same noise for both
--
-- Heavy parts run in the core (core/metrics.h): k-NN radii and manifold
-- counts (sgemm blocks with exact f64 decisions), mean/covariance (dsyrk),
-- eigh (LAPACK dsyevd).
local core = require "advdiff.core"
local U = require "advdiff.metrics.util"
local sharp = require "advdiff.metrics.sharpness"
local feat = require "advdiff.metrics.features"
local fidm = require "advdiff.metrics.fid"
local prdc = require "advdiff.metrics.prdc"
local spec = require "advdiff.metrics.spectrum"

local M = {}

-- sharpness
M.sharpness = sharp.sharpness
M.gray = sharp.gray
M.laplacian = sharp.laplacian

-- features
M.features = feat.features
M.inception = feat.inception
M.progress_bar = feat.progress_bar

-- FID and friends
M.stats = fidm.stats
M.fid = fidm.fid
M.frechet_distance = fidm.frechet_distance
M.sqrtm_psd = fidm.sqrtm_psd
M.save_stats = fidm.save_stats
M.load_stats = fidm.load_stats
M.reference_stats = fidm.reference_stats
M.kid = fidm.kid
M.inception_logits = fidm.inception_logits

--- Inception Score of images (N, 3, H, W) (opts.extractor: the FID network
-- with its weights, or a path to them) or of logits (N, classes). Returns
-- the mean over splits and their std. opts: splits=10 or split_size=,
-- bias=false (guided-diffusion's evaluator uses the softmax weights only),
-- plus features()'s batch_size/device/progress/range for images.
function M.inception_score(x, opts)
  opts = U.opts("inception_score", opts)
  if not core.is_tensor(x) then error("inception_score: images (N, 3, H, W) or logits (N, C) expected", 2) end
  local logits = x
  if x:dim() == 4 then
    local ex = opts.extractor
    if type(ex) == "string" then ex = feat.inception(ex, { device = opts.device }) end
    if ex == nil then error("inception_score: images need opts.extractor (the FID InceptionV3 with weights)", 2) end
    local f = feat.features(x, ex, opts)
    logits = fidm.inception_logits(f, ex, { bias = opts.bias })
  elseif x:dim() ~= 2 then
    error("inception_score: images (N, 3, H, W) or logits (N, C) expected, got " .. U.shape_str(x), 2)
  end
  return fidm.inception_score_from_logits(logits, opts)
end

-- precision/recall, density/coverage
M.knn_radii = prdc.knn_radii
M.precision_recall = prdc.precision_recall
M.density_coverage = prdc.density_coverage
M.prdc = prdc.prdc

-- spectra
M.radial_power_spectrum = spec.radial_power_spectrum

-- the report (loaded on first use: it pulls in image output and plotting)
local from_compare = { compare = true, discriminator_scores = true, RELIABLE_N = true, bootstrap_ci = true,
                       sample_models = true, flat_results = true }
setmetatable(M, {
  __index = function(t, k)
    if from_compare[k] then
      local cmp = require "advdiff.metrics.compare"
      for name in pairs(from_compare) do rawset(t, name, cmp[name]) end
      return rawget(t, k)
    end
    if k == "plot" then
      local p = require "advdiff.metrics.plot"
      rawset(t, "plot", p)
      return p
    end
    return nil
  end,
})

return M
