--- advdiff.metrics.compare: the paper's Table 1 for two generators' samples,
-- with bootstrap confidence intervals and honest warnings, written as
-- Markdown, JSON and PNGs; and discriminator_scores.
--
--   local res = ad.metrics.compare{
--     real = x_real, a = samples_pretrained, b = samples_finetuned,   -- (N, 3, H, W)
--     names = {"pretrained", "fine-tuned"}, range = {-1, 1},
--     extractor = ad.metrics.inception("pt_inception-2015-12-05-6726825d.pth"),
--     D = discriminator, labels = {real = y_real, a = y, b = y},
--     out = "eval/run1"}
--   print(res.markdown)
--   local s0, s1 = table.unpack(ad.metrics.sample_models(d, {G0, G1}, {shape = shape, y = y}))
--   local results = ad.metrics.flat_results(res.metrics)      -- for a results.json
--
-- Every number comes with a percentile bootstrap interval: the real set and
-- each generated set are resampled with replacement (seeded; the two
-- generated sets with the same indices when they have the same size, since
-- the paper draws them from the same noise and labels), and every metric,
-- and the change between the two models, is recomputed on each resample.
-- In a resample, copies of one point are one point to the k-NN radii and
-- to KID's unbiased estimator (they are never each other's neighbour).
-- Intervals are the percentile intervals re-centred on the estimates (see
-- bootstrap_ci: FID and the k-NN metrics drift with the number of distinct
-- samples in a resample); the drift is kept in the results and flagged in
-- the notes when it exceeds half the interval. Below the sample sizes in
-- RELIABLE_N the notes say so and how wide the intervals are.
local core = require "advdiff.core"
local U = require "advdiff.metrics.util"
local sharp = require "advdiff.metrics.sharpness"
local feat = require "advdiff.metrics.features"
local fidm = require "advdiff.metrics.fid"
local prdc = require "advdiff.metrics.prdc"
local spec = require "advdiff.metrics.spectrum"

local M = {}

--- Sample sizes below which a metric is not to be trusted, and why. The
-- paper's own evaluation (100 samples) is far below most of them: the metrics
-- still run, and the report says what the numbers are worth.
M.RELIABLE_N = {
  sharpness = { n = 30, why = "a mean of per-image values; fewer than 30 images give a noisy mean" },
  precision = { n = 10000, why = "k-NN manifold estimates (Kynkäänniemi et al. use 50 000 samples); at small N each radius rests on k neighbours among few points and the value moves with N itself" },
  recall = { n = 10000, why = "k-NN manifold estimates (Kynkäänniemi et al. use 50 000 samples); at small N recall is biased low" },
  density = { n = 10000, why = "k-NN estimate (Naeem et al. use 10 000+ samples)" },
  coverage = { n = 10000, why = "k-NN estimate (Naeem et al. use 10 000+ samples)" },
  fid = { n = 10000, why = "FID is biased upward at small N (the bias grows as 1/N); below the feature dimension the covariance is singular. 50 000 samples is the standard; compare FIDs only at equal N" },
  kid = { n = 1000, why = "KID is unbiased but its variance is large at small N" },
  inception_score = { n = 5000, why = "IS is computed per split (guided-diffusion: 10 splits of 5 000); small splits bias it low" },
  d_score = { n = 30, why = "a mean of per-sample discriminator outputs" },
}

--- Bootstrap interval of a list of resampled values (NaNs dropped).
-- Without estimate: the percentile interval {lo, hi}. With the estimate:
-- the percentile interval re-centred on it, {lo - shift, hi - shift} with
-- shift = median(values) - estimate, clipped to bounds = {min, max}; the
-- second result is the shift. Why re-centre: a resample holds about 63% of
-- the distinct points, and FID and the k-NN metrics depend on the number of
-- distinct points, so their bootstrap distribution is displaced from the
-- estimate by an artefact of resampling; its spread is what it measures.
-- Returns nil when fewer than 2 values are finite.
function M.bootstrap_ci(values, level, estimate, bounds)
  level = level or 0.95
  local a = {}
  for _, v in ipairs(values) do if v == v then a[#a + 1] = v end end
  if #a < 2 then return nil end
  local alpha = (1 - level) / 2
  local lo, hi = U.quantile(a, alpha), U.quantile(a, 1 - alpha)
  if estimate == nil or estimate ~= estimate then return { lo, hi } end
  local shift = U.quantile(a, 0.5) - estimate
  lo, hi = lo - shift, hi - shift
  if bounds then
    if bounds[1] then lo, hi = math.max(lo, bounds[1]), math.max(hi, bounds[1]) end
    if bounds[2] then lo, hi = math.min(lo, bounds[2]), math.min(hi, bounds[2]) end
  end
  return { lo, hi }, shift
end

---------------------------------------------------------------------------- D scores

local function labels_for(labels, name, n)
  if labels == nil then return nil end
  local y = labels
  if type(labels) == "table" and not core.is_tensor(labels) then y = labels[name] end
  if y == nil then return nil end
  if not core.is_tensor(y) or y:numel() ~= n then
    error(string.format("discriminator_scores: labels for '%s' must be a tensor of %d class indices", tostring(name), n), 3)
  end
  return y:view(n)
end

--- Mean sigmoid output of a discriminator on each batch of images.
-- batches: {name = images, ...} (or a list). opts.labels: one label tensor
-- for all batches or {name = labels}; D is called D(x, y) (D(x) without
-- labels) under no_grad in eval mode, on images as given (the paper's
-- discriminator takes [-1, 1]). opts: batch_size=100, device.
-- Returns {name = {mean = number, scores = (N) f64 tensor}}.
function M.discriminator_scores(D, batches, opts)
  opts = U.opts("discriminator_scores", opts)
  if D == nil or (type(D) ~= "table" and type(D) ~= "function") then
    error("discriminator_scores: D must be a module or a function", 2)
  end
  if type(batches) ~= "table" or core.is_tensor(batches) then
    error("discriminator_scores: batches must be a table {name = images}", 2)
  end
  local bs = U.posint("discriminator_scores", "batch_size", opts.batch_size, 100)
  local was_training = type(D) == "table" and D.training
  if was_training and D.eval then D:eval() end
  local res = {}
  local ok, err = pcall(core.no_grad, function()
    for name, x in pairs(batches) do
      if not core.is_tensor(x) or x:dim() ~= 4 then
        error(string.format("discriminator_scores: batch '%s' must be images (N, C, H, W)", tostring(name)), 0)
      end
      local n = x:shape()[1]
      local y = labels_for(opts.labels, name, n)
      local parts = {}
      for i0 = 1, n, bs do
        local m = math.min(bs, n - i0 + 1)
        local xb = x:narrow(1, i0, m)
        local yb = y and y:narrow(1, i0, m)
        if opts.device then
          xb = xb:to { device = opts.device }
          if yb then yb = yb:to { device = opts.device } end
        end
        if xb:dtype() ~= "f32" and xb:dtype() ~= "f64" then xb = xb:float() end
        local out = type(D) == "function" and D(xb, yb) or (yb and D(xb, yb) or D(xb))
        if out:numel() ~= m then
          error(string.format("discriminator_scores: D must return one logit per image, got %s for %d images",
            U.shape_str(out), m), 0)
        end
        parts[#parts + 1] = out:detach():double():cpu():reshape(m):sigmoid()
      end
      local scores = #parts == 1 and parts[1] or core.cat(parts, 1)
      res[name] = { mean = scores:mean():item(), scores = scores }
    end
  end)
  if was_training and D.train then D:train() end
  if not ok then error(err, 2) end
  return res
end

---------------------------------------------------------------------------- helpers

local function list_of(t) return t:double():reshape(-1):tolist() end

local function mean_at(list, idx)   -- idx: Lua list of 0-based indices, or nil
  if not idx then return U.mean(list) end
  local s = 0
  for _, i in ipairs(idx) do s = s + list[i + 1] end
  return s / #idx
end

local function pct_change(a, b)
  if a == nil or b == nil or a ~= a or b ~= b or a == 0 then return 0 / 0 end
  return (b - a) / math.abs(a) * 100
end

local function fmt_num(v)
  if v == nil then return "—" end
  if v ~= v then return "n/a" end
  local a = math.abs(v)
  if a ~= 0 and (a < 1e-3 or a >= 1e5) then return string.format("%.3e", v) end
  return string.format("%.4g", v)
end

local function fmt_ci(ci)
  if not ci then return "" end
  return string.format(" [%s, %s]", fmt_num(ci[1]), fmt_num(ci[2]))
end

local function fmt_pct(v)
  if v == nil or v ~= v then return "n/a" end
  return string.format("%+.1f%%", v)
end

---------------------------------------------------------------------------- compare

local ROWS = {
  { key = "sharpness", label = "Sharpness (Laplacian var.)", better = "higher", bounds = { 0 } },
  { key = "sharpness_gap", label = "Sharpness gap abs(model - real)", better = "lower", bounds = { 0 } },
  { key = "precision", label = "Precision (k=%d)", better = "higher", k = "k", bounds = { 0, 1 } },
  { key = "recall", label = "Recall (k=%d)", better = "higher", k = "k", bounds = { 0, 1 } },
  { key = "density", label = "Density (k=%d)", better = "higher", k = "k_dc", bounds = { 0 } },
  { key = "coverage", label = "Coverage (k=%d)", better = "higher", k = "k_dc", bounds = { 0, 1 } },
  { key = "fid", label = "FID", better = "lower", bounds = { 0 } },
  { key = "kid", label = "KID", better = "lower" },
  { key = "inception_score", label = "Inception Score", better = "higher", bounds = { 1 } },
  { key = "d_score", label = "D score (mean sigmoid)", better = nil, bounds = { 0, 1 } },
}

--- The paper's Table 1 for two generators. opts:
--   real, a, b        images (N, C, H, W): float in opts.range (default {-1, 1}) or u8 (0..255);
--                     sharpness, spectra and features see them mapped to [0, 1], the
--                     discriminator as given
--   names             {"pretrained", "fine-tuned"}
--   extractor         a feature extractor (module, function, or path to pytorch-fid's
--                     weights); or features = {real=, a=, b=} precomputed (N, D)
--   D, labels         discriminator and its class labels (a tensor shared by a and b, or
--                     {real=, a=, b=})
--   k=3 (precision/recall), k_dc=5 (density/coverage)
--   bootstrap         resamples (default 200 when every set has <= 2000 samples, else 50; 0: none)
--   seed=0, level=0.95, paired (default: when a and b have the same size)
--   kid = {subsets=, subset_size=}, kid_bootstrap_subsets=10
--   inception_score   true/false (default: when the extractor has the 1008-way fc)
--   out               a directory: table.md, results.json, samples.png, spectrum.png
--   grid_n=64         images per model in samples.png
--   batch_size, device, progress   for feature extraction
-- Returns {metrics = {key = {...}}, markdown = text, warnings = {...}, ...}.
function M.compare(opts)
  opts = U.opts("compare", opts)
  local names = opts.names or { "pretrained", "fine-tuned" }
  if type(names) ~= "table" or type(names[1]) ~= "string" or type(names[2]) ~= "string" then
    error("compare: option 'names' must be two strings", 2)
  end
  local range = opts.range or { -1, 1 }
  local k = U.posint("compare", "k", opts.k, 3)
  local k_dc = U.posint("compare", "k_dc", opts.k_dc, 5)
  local level = opts.level or 0.95
  local seed = opts.seed or 0
  local imgs = { real = opts.real, a = opts.a, b = opts.b }
  local N = {}
  for _, key in ipairs { "real", "a", "b" } do
    local x = imgs[key]
    if x ~= nil then
      if not core.is_tensor(x) or x:dim() ~= 4 then
        error(string.format("compare: '%s' must be images (N, C, H, W)", key), 2)
      end
      N[key] = x:shape()[1]
    end
  end
  local feats
  if opts.features ~= nil then
    if type(opts.features) ~= "table" or core.is_tensor(opts.features) then
      error("compare: option 'features' must be {real=, a=, b=} feature tensors", 2)
    end
    feats = {}
    for _, key in ipairs { "real", "a", "b" } do
      feats[key] = U.features("compare", "features." .. key, opts.features[key])
      if N[key] and N[key] ~= feats[key]:shape()[1] then
        error(string.format("compare: %d images but %d feature rows for '%s'", N[key], feats[key]:shape()[1], key), 2)
      end
      N[key] = feats[key]:shape()[1]
    end
  end
  if not N.real or not N.a or not N.b then error("compare: 'real', 'a' and 'b' are required", 2) end
  local progress = opts.progress
  if progress == nil then progress = true end
  local log = progress and function(s) io.stderr:write("compare: " .. s .. "\n") end or function() end

  -- per-sample quantities -------------------------------------------------
  -- every image-based metric sees [0, 1] floats (u8 sets divided by 255), so
  -- a u8 real set and float samples are measured on one scale
  local x01 = {}
  local sv = {}
  if imgs.real and imgs.a and imgs.b then
    for _, key in ipairs { "real", "a", "b" } do
      x01[key] = U.images01("compare", imgs[key], range)
      local _, v = sharp.sharpness(x01[key])
      sv[key] = list_of(v)
    end
  end
  local extractor = opts.extractor
  if type(extractor) == "string" then extractor = feat.inception(extractor, { device = opts.device }) end
  if feats == nil and extractor ~= nil then
    feats = {}
    for _, key in ipairs { "real", "a", "b" } do
      log("features of " .. (key == "real" and "real" or names[key == "a" and 1 or 2]) .. " images")
      feats[key] = feat.features(x01[key] or U.images01("compare", imgs[key], range), extractor, {
        batch_size = opts.batch_size, device = opts.device, progress = progress, label = "  features",
      })
    end
  end
  local logits
  local want_is = opts.inception_score
  if want_is == nil then
    want_is = type(extractor) == "table" and type(extractor.fc) == "table" and core.is_tensor(extractor.fc.weight)
  end
  if want_is and feats then
    if type(extractor) ~= "table" or extractor.fc == nil then
      error("compare: inception_score needs the FID InceptionV3 extractor (its fc layer)", 2)
    end
    logits = {}
    for _, key in ipairs { "real", "a", "b" } do logits[key] = fidm.inception_logits(feats[key], extractor) end
  end
  local dsc
  if opts.D ~= nil then
    local r = M.discriminator_scores(opts.D, { real = imgs.real, a = imgs.a, b = imgs.b },
      { labels = opts.labels, batch_size = opts.batch_size, device = opts.device })
    dsc = { real = list_of(r.real.scores), a = list_of(r.a.scores), b = list_of(r.b.scores) }
  end
  local kid_opts = opts.kid or {}
  local is_splits = opts.is_splits or 10

  -- one evaluation on (possibly resampled) sets -----------------------------
  -- sel = nil (the data as is) or {real=, a=, b=}: Lua lists of 0-based indices
  local function evaluate(sel, rep)
    local out = {}
    local function T(idx) return idx and core.tensor(idx, { dtype = "i64" }) or nil end
    local ti = sel and { real = T(sel.real), a = T(sel.a), b = T(sel.b) } or {}
    local function pick(t, key) return ti[key] and t:index_select(1, ti[key]) or t end
    if sv.real then
      local r = mean_at(sv.real, sel and sel.real)
      local va, vb = mean_at(sv.a, sel and sel.a), mean_at(sv.b, sel and sel.b)
      out.sharpness = { real = r, a = va, b = vb }
      out.sharpness_gap = { a = math.abs(va - r), b = math.abs(vb - r) }
    end
    if feats then
      local fr = pick(feats.real, "real")
      local rr = prdc.knn_radii(fr, k, { ids = ti.real })
      local rr5 = prdc.knn_radii(fr, k_dc, { ids = ti.real })
      for _, m in ipairs { "precision", "recall", "density", "coverage", "fid", "kid" } do out[m] = {} end
      for _, key in ipairs { "a", "b" } do
        local ff = pick(feats[key], key)
        local rf = prdc.knn_radii(ff, k, { ids = ti[key] })
        local r1 = prdc.prdc(fr, ff, { k = k, radii = { real = rr, fake = rf } })
        local r2 = prdc.prdc(fr, ff, { k = k_dc, radii = { real = rr5 }, _no_recall = true })
        out.precision[key], out.recall[key] = r1.precision, r1.recall
        out.density[key], out.coverage[key] = r2.density, r2.coverage
        out.fid[key] = fidm.fid(fr, ff, { method = sel and "auto" or "eigen" })
        out.kid[key] = fidm.kid(ff, fr, {
          subsets = sel and (opts.kid_bootstrap_subsets or 10) or kid_opts.subsets,
          subset_size = kid_opts.subset_size, seed = seed + (rep or 0), ids_a = ti[key], ids_b = ti.real,
        })
      end
    end
    if logits then
      out.inception_score = {}
      for _, key in ipairs { "real", "a", "b" } do
        local l = pick(logits[key], key)
        local n = l:shape()[1]
        out.inception_score[key] = fidm.inception_score_from_logits(l, { splits = math.min(is_splits, n) })
      end
    end
    if dsc then
      out.d_score = { real = mean_at(dsc.real, sel and sel.real), a = mean_at(dsc.a, sel and sel.a),
        b = mean_at(dsc.b, sel and sel.b) }
    end
    return out
  end

  log("metrics")
  local point = evaluate(nil)

  -- bootstrap ---------------------------------------------------------------
  local maxn = math.max(N.real, N.a, N.b)
  local B = opts.bootstrap
  if B == nil then B = maxn <= 2000 and 200 or 50 end
  B = U.posint("compare", "bootstrap", B, 200, 0)
  local paired = opts.paired
  if paired == nil then paired = N.a == N.b end
  if paired and N.a ~= N.b then error("compare: paired resampling needs a and b of the same size", 2) end
  local boot = {}
  if B > 0 then
    local gen = core.Generator(seed)
    local function draw(n) return core.randint(0, n, { n }, { generator = gen }):tolist() end
    local update = progress and feat.progress_bar(B, "  bootstrap") or nil
    for rep = 1, B do
      local sel = { real = draw(N.real), a = draw(N.a) }
      sel.b = paired and sel.a or draw(N.b)
      local r = evaluate(sel, rep)
      for m, cols in pairs(r) do
        boot[m] = boot[m] or { real = {}, a = {}, b = {}, change = {} }
        for col, v in pairs(cols) do table.insert(boot[m][col], v) end
        if cols.a and cols.b then table.insert(boot[m].change, pct_change(cols.a, cols.b)) end
      end
      if update then update(rep) end
    end
  end

  -- assemble -----------------------------------------------------------------
  local metrics, order, warnings = {}, {}, {}
  local nmin = math.min(N.real, N.a, N.b)
  for _, row in ipairs(ROWS) do
    local p = point[row.key]
    if p then
      local label = row.k and string.format(row.label, row.k == "k" and k or k_dc) or row.label
      local e = {
        label = label, better = row.better, real = p.real, a = p.a, b = p.b,
        change_pct = pct_change(p.a, p.b),
      }
      local bt = boot[row.key]
      if bt then
        e.ci_real, e.boot_shift_real = M.bootstrap_ci(bt.real, level, p.real, row.bounds)
        e.ci_a, e.boot_shift_a = M.bootstrap_ci(bt.a, level, p.a, row.bounds)
        e.ci_b, e.boot_shift_b = M.bootstrap_ci(bt.b, level, p.b, row.bounds)
        e.ci_change_pct, e.boot_shift_change_pct = M.bootstrap_ci(bt.change, level, e.change_pct)
        -- a shift beyond half the interval: the metric moves with the number of
        -- distinct samples, so its value at this N is itself in question
        local big = {}
        for _, col in ipairs { "a", "b" } do
          local ci, sh = e["ci_" .. col], e["boot_shift_" .. col]
          if ci and sh and math.abs(sh) > 0.5 * (ci[2] - ci[1]) and math.abs(sh) > 0 then
            big[#big + 1] = string.format("%s %+.3g", col == "a" and names[1] or names[2], sh)
          end
        end
        if #big > 0 then
          e.shift_note = string.format("resampling moves %s systematically (bootstrap median minus estimate: %s): "
            .. "it depends on the number of distinct samples, so intervals were re-centred on the estimates", label,
            table.concat(big, ", "))
        end
      end
      local rel = M.RELIABLE_N[row.key == "sharpness_gap" and "sharpness" or row.key]
      if rel and nmin < rel.n then
        e.warning = string.format("N = %d < %d: %s.", nmin, rel.n, rel.why)
        if row.key == "fid" and feats and nmin <= feats.real:shape()[2] then
          e.warning = e.warning .. string.format(" Here N <= D = %d: the covariances have rank <= N - 1.", feats.real:shape()[2])
        end
        if e.ci_a and e.ci_b then
          e.warning = e.warning .. string.format(" The %d%% intervals are %s wide (%s) and %s wide (%s).",
            math.floor(level * 100 + 0.5), fmt_num(e.ci_a[2] - e.ci_a[1]), names[1], fmt_num(e.ci_b[2] - e.ci_b[1]), names[2])
        end
        warnings[#warnings + 1] = label .. ": " .. e.warning
      end
      if e.shift_note then warnings[#warnings + 1] = label .. ": " .. e.shift_note .. "." end
      if e.ci_change_pct and e.ci_change_pct[1] <= 0 and e.ci_change_pct[2] >= 0 then
        e.significant = false
      elseif e.ci_change_pct then
        e.significant = true
      end
      metrics[row.key] = e
      order[#order + 1] = row.key
    end
  end
  if not feats then
    warnings[#warnings + 1] = "No feature extractor (opts.extractor) or features: precision, recall, density, coverage, FID and KID were not computed."
  elseif N.a ~= N.b then
    warnings[#warnings + 1] = string.format("The generated sets differ in size (%s %d, %s %d): FID and the k-NN metrics "
      .. "depend on N, so their change mixes model and sample size; compare at equal N.", names[1], N.a, names[2], N.b)
  end

  -- spectra -----------------------------------------------------------------
  local spectrum
  if imgs.real and imgs.a and imgs.b then
    local sr, _, freqs = spec.radial_power_spectrum(x01.real)
    local sa, sb = spec.radial_power_spectrum(x01.a), spec.radial_power_spectrum(x01.b)
    local nb = sr:numel()
    spectrum = { freqs = list_of(freqs), real = list_of(sr), a = list_of(sa), b = list_of(sb) }
    spectrum.ratio_a, spectrum.ratio_b = {}, {}
    for i = 1, nb do
      spectrum.ratio_a[i] = spectrum.a[i] / spectrum.real[i]
      spectrum.ratio_b[i] = spectrum.b[i] / spectrum.real[i]
    end
  end

  -- report ------------------------------------------------------------------
  local res = {
    names = { names[1], names[2] }, n = N, k = k, k_dc = k_dc, bootstrap = B, paired = paired, level = level,
    seed = seed, range = range, metrics = metrics, order = order, warnings = warnings, spectrum = spectrum,
    feature_dim = feats and feats.real:shape()[2] or nil,
  }
  res.markdown = M.markdown(res)
  if opts.out then
    U.mkdir(opts.out)
    local dir = opts.out:gsub("/$", "")
    U.write_file(dir .. "/table.md", res.markdown)
    local j = {}
    for key, v in pairs(res) do if key ~= "markdown" then j[key] = v end end
    U.write_file(dir .. "/results.json", U.json(j) .. "\n")
    res.files = { dir .. "/table.md", dir .. "/results.json" }
    if imgs.a and imgs.b then
      M.save_grids(dir .. "/samples.png", x01.a or U.images01("compare", imgs.a, range),
        x01.b or U.images01("compare", imgs.b, range), names, { range = { 0, 1 }, n = opts.grid_n })
      res.files[#res.files + 1] = dir .. "/samples.png"
    end
    if spectrum then
      local plot = require "advdiff.metrics.plot"
      local xs, ya, yb = {}, {}, {}
      for i = 2, #spectrum.freqs do   -- bin 0 is the mean brightness
        xs[#xs + 1], ya[#ya + 1], yb[#yb + 1] = spectrum.freqs[i], spectrum.ratio_a[i], spectrum.ratio_b[i]
      end
      plot.line_plot(dir .. "/spectrum.png", {
        { name = names[1], x = xs, y = ya }, { name = names[2], x = xs, y = yb },
      }, { title = "Radial power spectrum / real", xlabel = "spatial frequency (cycles/pixel)",
        ylabel = "model power / real power", logy = true, hline = 1 })
      res.files[#res.files + 1] = dir .. "/spectrum.png"
    end
  end
  return res
end

--- Samples of several generators drawn the way the paper compares them: one
-- x_T, the same labels, and the same per-step noise (a fresh generator with
-- one seed for each model), so that the models differ and nothing else.
--   local s = ad.metrics.sample_models(d, {G0, G1}, {shape = {n, 3, 64, 64}, y = labels, seed = 0})
-- d: a diffusion (respaced as wanted); opts: shape, y (the class labels or
-- nil), seed (x_T from seed + 100, the step noise from seed + 101), device,
-- clip_denoised (true), progress, names (for the stderr lines). Returns the
-- samples in the models' order.
function M.sample_models(d, models, opts)
  opts = opts or {}
  if type(models) ~= "table" or #models == 0 then
    error("sample_models: expected a list of generators, got " .. type(models), 2)
  end
  if type(opts.shape) ~= "table" then error("sample_models: opts.shape {N, C, H, W} is required", 2) end
  local seed = opts.seed or 0
  local noise = core.randn(opts.shape, { generator = core.Generator(seed + 100), device = opts.device })
  local out = {}
  for i, G in ipairs(models) do
    if opts.names then
      io.stderr:write(string.format("sampling %d images from the %s model (%d steps)\n", opts.shape[1],
        opts.names[i] or ("model " .. i), d.num_timesteps))
    end
    out[i] = d:p_sample_loop(G, opts.shape, { noise = noise, model_kwargs = opts.y and { y = opts.y } or nil,
      clip_denoised = opts.clip_denoised ~= false, generator = core.Generator(seed + 101),
      progress = opts.progress })
  end
  return out
end

--- compare()'s metrics as flat fields of a results table (into, or a new one):
-- into[key] = model b's value, into.pretrained[key] = model a's,
-- into.real[key] (where the metric has one), into.change_pct[key], and
-- into.ci[key] = {pretrained =, finetuned =, change_pct =} intervals.
function M.flat_results(metrics, into)
  into = into or {}
  into.pretrained, into.real = into.pretrained or {}, into.real or {}
  into.change_pct, into.ci = into.change_pct or {}, into.ci or {}
  for key, e in pairs(metrics or {}) do
    into[key] = e.b
    into.pretrained[key] = e.a
    if e.real ~= nil then into.real[key] = e.real end
    into.change_pct[key] = e.change_pct
    into.ci[key] = { pretrained = e.ci_a, finetuned = e.ci_b, change_pct = e.ci_change_pct }
  end
  return into
end

--- The Markdown report of a compare() result.
function M.markdown(res)
  local n1, n2 = res.names[1], res.names[2]
  local L = {}
  L[#L + 1] = string.format("# Evaluation: %s vs %s", n1, n2)
  L[#L + 1] = ""
  L[#L + 1] = string.format("N: real %d, %s %d, %s %d.%s", res.n.real, n1, res.n.a, n2, res.n.b,
    res.metrics.sharpness and string.format(" Float images taken in [%g, %g].", res.range[1], res.range[2]) or "")
  if res.bootstrap > 0 then
    L[#L + 1] = string.format("Intervals: %d%% percentile bootstrap over %d resamples of the real and generated sets (%s, seed %d), "
      .. "re-centred on the estimates (results.json keeps the shifts).",
      math.floor(res.level * 100 + 0.5), res.bootstrap, res.paired and "generated sets resampled with the same indices" or "independent", res.seed)
  else
    L[#L + 1] = "No bootstrap (bootstrap = 0): the numbers carry no intervals."
  end
  if res.feature_dim then L[#L + 1] = string.format("Features: %d-d.", res.feature_dim) end
  L[#L + 1] = ""
  L[#L + 1] = string.format("| Metric | Real | %s | %s | Change | Reliable at this N? |", n1, n2)
  L[#L + 1] = "|---|---|---|---|---|---|"
  for _, key in ipairs(res.order) do
    local e = res.metrics[key]
    local arrow = e.better == "higher" and " ↑" or e.better == "lower" and " ↓" or ""
    local real = e.real and (fmt_num(e.real) .. fmt_ci(e.ci_real)) or "—"
    local change = fmt_pct(e.change_pct)
    if e.ci_change_pct then
      change = change .. string.format(" [%s, %s]", fmt_pct(e.ci_change_pct[1]), fmt_pct(e.ci_change_pct[2]))
    end
    if e.significant == false then change = change .. " (n.s.)" end
    L[#L + 1] = string.format("| %s%s | %s | %s%s | %s%s | %s | %s |", e.label, arrow, real, fmt_num(e.a), fmt_ci(e.ci_a),
      fmt_num(e.b), fmt_ci(e.ci_b), change, e.warning and "no (see notes)" or "yes")
  end
  if res.metrics.sharpness then
    local s = res.metrics.sharpness
    L[#L + 1] = ""
    L[#L + 1] = string.format("Sharpness of the real images: %s%s; %s is %s and %s is %s from it.", fmt_num(s.real),
      fmt_ci(s.ci_real), n1, fmt_num(math.abs(s.a - s.real)), n2, fmt_num(math.abs(s.b - s.real)))
  end
  if #res.warnings > 0 then
    L[#L + 1] = ""
    L[#L + 1] = "## Notes"
    L[#L + 1] = ""
    for _, w in ipairs(res.warnings) do L[#L + 1] = "- " .. w end
  end
  L[#L + 1] = ""
  L[#L + 1] = "\"(n.s.)\": the interval of the change includes 0."
  return table.concat(L, "\n") .. "\n"
end

--- Two sample grids side by side with captions, as one PNG.
function M.save_grids(path, a, b, names, opts)
  opts = opts or {}
  local image = require "advdiff.image"
  local plot = require "advdiff.metrics.plot"
  local nmax = opts.n or 64
  local function grid(x)
    local n = math.min(nmax, x:shape()[1])
    x = x:narrow(1, 1, n)
    local g
    if x:dtype() == "u8" then
      g = image.grid(x:float() / 255, { nrow = math.ceil(math.sqrt(n)), padding = 2, pad_value = 1 })
    else
      g = image.grid(x:float(), { nrow = math.ceil(math.sqrt(n)), padding = 2, pad_value = 1, normalize = true,
        value_range = opts.range or { -1, 1 } })
    end
    return g:float():clamp(0, 1)
  end
  local ga, gb = grid(a), grid(b)
  local ca, cb = plot.text_image(names[1], 2), plot.text_image(names[2], 2)
  local gap = 16
  local ha = math.max(ga:shape()[2], gb:shape()[2])
  local cap = math.max(ca:shape()[2], cb:shape()[2])
  local wa, wb = math.max(ga:shape()[3], ca:shape()[3]), math.max(gb:shape()[3], cb:shape()[3])
  local canvas = core.ones(3, cap + ha, wa + gap + wb)
  local function paste(img, y, x)
    local s = img:shape()
    canvas:narrow(2, y, s[2]):narrow(3, x, s[3]):copy_(img)
  end
  paste(ca, 1, 1 + (wa - ca:shape()[3]) // 2)
  paste(cb, 1, 1 + wa + gap + (wb - cb:shape()[3]) // 2)
  paste(ga, cap + 1, 1)
  paste(gb, cap + 1, 1 + wa + gap)
  image.save(path, canvas)
end

return M
