--- advdiff.metrics.features: batched feature extraction with a progress bar.
--
--   local net = ad.metrics.inception("pt_inception-2015-12-05-6726825d.pth")
--   local f = ad.metrics.features(images, net, {batch_size = 50, device = "cuda"})
--
-- The extractor is pytorch-fid's InceptionV3 (ad.models.inception_v3_fid with
-- its weights; features are the 2048-d pool3 activations), any module with a
-- features(x) method, any module or function returning (N, D) features (or
-- (N, D, 1, 1), flattened), or a path to pytorch-fid's weights.
local core = require "advdiff.core"
local U = require "advdiff.metrics.util"

local M = {}

--- A progress bar on stderr: returns update(done). Redraws at most 5 times a
-- second and ends the line when done == total.
function M.progress_bar(total, label)
  local t0, last = U.now(), -math.huge
  label = label or "features"
  return function(done)
    local now = U.now()
    if done < total and now - last < 0.2 then return end
    last = now
    local frac = total > 0 and done / total or 1
    local width = 28
    local filled = math.floor(frac * width + 0.5)
    local el = now - t0
    local rate = el > 0 and done / el or 0
    local eta = rate > 0 and (total - done) / rate or 0
    local function hms(s)
      s = math.floor(s + 0.5)
      if s >= 3600 then return string.format("%dh%02dm", s // 3600, (s % 3600) // 60) end
      return string.format("%dm%02ds", s // 60, s % 60)
    end
    io.stderr:write(string.format("\r%s [%s%s] %d/%d %3d%% %.1f/s %s %s", label, string.rep("=", filled),
      string.rep(" ", width - filled), done, total, math.floor(frac * 100 + 0.5), rate,
      done < total and "ETA" or "in", hms(done < total and eta or el)))
    if done >= total then io.stderr:write("\n") end
    io.stderr:flush()
  end
end

local inception_cache = {}

--- pytorch-fid's InceptionV3 with the weights at path (cached per path), in
-- eval mode. opts.device moves it.
function M.inception(path, opts)
  opts = U.opts("inception", opts)
  if type(path) ~= "string" then
    error("inception: path of pytorch-fid's weights (pt_inception-2015-12-05-6726825d.pth) expected", 2)
  end
  local key = path .. "|" .. tostring(opts.device)
  if inception_cache[key] then return inception_cache[key] end
  local models = require "advdiff.models"
  local net = models.inception_v3_fid()
  local ok, err = pcall(function() net:load_state_dict(core.load(path)) end)
  if not ok then error("inception: cannot load " .. path .. ": " .. tostring(err), 2) end
  net:eval()
  if opts.device then net:to(opts.device) end
  inception_cache[key] = net
  return net
end

-- a function x -> (N, D) for whatever extractor the caller gave
local function feature_fn(extractor, opts)
  if type(extractor) == "string" then extractor = M.inception(extractor, { device = opts.device }) end
  if type(extractor) == "function" then return extractor, nil end
  if type(extractor) ~= "table" then
    error("features: extractor must be a module, a function or a path to pytorch-fid's weights, got " .. type(extractor), 3)
  end
  if opts.device and extractor.to then extractor:to(opts.device) end
  if type(extractor.features) == "function" then
    return function(x) return extractor:features(x) end, extractor
  end
  local mt = getmetatable(extractor)
  if type(extractor.forward) == "function" or (mt and mt.__call) then
    return function(x) return extractor(x) end, extractor
  end
  error("features: extractor has neither features() nor forward()", 3)
end

--- Features of images (N, C, H, W) in batches. Returns (N, D) f32 on the CPU.
-- images: a tensor, or a list of batch tensors. u8 images are divided by
-- 255; float images are taken in [0, 1] (opts.range maps another range).
-- opts: batch_size=50, device= (e.g. "cuda": batches and the extractor go
-- there), progress=true (false, or a function(done, total)), range=.
function M.features(images, extractor, opts)
  opts = U.opts("features", opts)
  if extractor == nil then
    error("features: an extractor is required, e.g. ad.metrics.inception(\"pt_inception-2015-12-05-6726825d.pth\")", 2)
  end
  local bs = U.posint("features", "batch_size", opts.batch_size, 50)
  local batches
  if core.is_tensor(images) then
    local s = images:shape()
    if #s ~= 4 then
      error(string.format("features: images must be (N, C, H, W), got %d-D %s", #s, U.shape_str(images)), 2)
    end
    batches = { images }
  elseif type(images) == "table" and #images > 0 then
    batches = images
    for i, b in ipairs(batches) do
      if not core.is_tensor(b) or #b:shape() ~= 4 then
        error(string.format("features: batch %d must be a tensor (N, C, H, W)", i), 2)
      end
    end
  else
    error("features: images must be a tensor (N, C, H, W) or a list of them", 2)
  end
  local total = 0
  for _, b in ipairs(batches) do total = total + b:shape()[1] end
  if total == 0 then error("features: no images", 2) end

  local fn, module = feature_fn(extractor, opts)
  local was_training = module and module.training
  if was_training and module.eval then module:eval() end
  local progress = opts.progress
  if progress == nil then progress = true end
  local update
  if type(progress) == "function" then update = function(done) progress(done, total) end
  elseif progress then update = M.progress_bar(total, opts.label or "features") end

  local out, done = {}, 0
  local ok, err = pcall(core.no_grad, function()
    for _, b in ipairs(batches) do
      local n = b:shape()[1]
      for i0 = 1, n, bs do
        local x = b:narrow(1, i0, math.min(bs, n - i0 + 1))
        if opts.device then x = x:to { device = opts.device } end
        x = U.images01("features", x, opts.range)
        if x:dtype() ~= "f32" then x = x:float() end
        local f = fn(x)
        if type(f) == "table" and not core.is_tensor(f) then f = f[1] end
        if not core.is_tensor(f) then error("features: the extractor returned no tensor", 0) end
        if f:dim() > 2 then f = f:flatten(2) end
        if f:dim() ~= 2 or f:shape()[1] ~= x:shape()[1] then
          error("features: the extractor must return (N, D) features, got " .. U.shape_str(f), 0)
        end
        out[#out + 1] = f:detach():float():cpu()
        done = done + x:shape()[1]
        if update then update(done) end
      end
    end
  end)
  if was_training and module.train then module:train() end
  if not ok then error(err, 2) end
  return #out == 1 and out[1] or core.cat(out, 1)
end

return M
