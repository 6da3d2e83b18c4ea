--- advdiff.diffusion.gaussian: the Gaussian diffusion process of
-- guided-diffusion (GaussianDiffusion, with SpacedDiffusion's respacing built
-- in). Schedules live in float64 Lua arrays; per-timestep coefficients are
-- gathered into (N, 1, ..., 1) tensors of the input's dtype, as
-- _extract_into_tensor does, and every tensor computation uses the core's ops in
-- the reference's order, so float32 results match PyTorch's to rounding.
--
-- Conventions
--   t: an i64 tensor (or a Lua list) of N 0-based step indices into THIS
--      (possibly respaced) process, one per batch element.
--   model: called as model(x, t_model, model_kwargs) when it is a function, and
--      as model(x, t_model, model_kwargs.y, model_kwargs) when it is a module
--      (a table with forward), so ADM's forward(x, t, y) receives its labels.
--      t_model = timestep_map[t] (i64), or timestep_map[t]*1000/original_steps
--      as f32 with rescale_timesteps: the model always sees ORIGINAL timesteps.
--   noise: opts.noise_fn(like) replaces randn_like(like) for every noise draw
--      inside a step (the diffusion's own noise_fn, set by create(), is used when
--      a call gives none); otherwise ad.randn_like with opts.generator (or the
--      diffusion's generator, or the default Philox generator).
local ad = require "advdiff"
local losses = require "advdiff.diffusion.losses"

local M = {}

M.ModelMeanType = { PREVIOUS_X = "previous_x", START_X = "start_x", EPSILON = "epsilon" }
M.ModelVarType = { LEARNED = "learned", FIXED_SMALL = "fixed_small", FIXED_LARGE = "fixed_large",
                   LEARNED_RANGE = "learned_range" }
M.LossType = { MSE = "mse", RESCALED_MSE = "rescaled_mse", KL = "kl", RESCALED_KL = "rescaled_kl" }

local LOG2 = math.log(2.0)

local function shape_str(s) return "[" .. table.concat(s, ", ") .. "]" end

local function fail(fname, fmt, ...)
  error(fname .. ": " .. string.format(fmt, ...), 3)
end

local function check_enum(fname, what, v, enum)
  for _, name in pairs(enum) do if v == name then return v end end
  local names = {}
  for _, name in pairs(enum) do names[#names + 1] = name end
  table.sort(names)
  fail(fname, "unknown %s '%s' (expected one of %s)", what, tostring(v), table.concat(names, ", "))
end

------------------------------------------------------------------------------
-- timestep_map: a Lua list of integers that also answers the read-only tensor
-- methods tests use (shape, numel, tolist, _getflat), and :tensor() for an i64
-- tensor.
local IntList = {}
IntList.__index = IntList
function IntList:tolist() return { table.unpack(self) } end
function IntList:shape() return { #self } end
function IntList:numel() return #self end
function IntList:dim() return 1 end
function IntList:dtype() return "i64" end
function IntList:_getflat(i) return self[i] end
function IntList:tensor(opts) return ad.tensor(self:tolist(), { dtype = "i64", device = opts and opts.device }) end

------------------------------------------------------------------------------
local Diffusion = {}
M.GaussianDiffusion = Diffusion

-- Schedule arrays exposed as f64 tensors on first access (d.betas, ...).
local EXPOSED = {
  betas = true, alphas_cumprod = true, alphas_cumprod_prev = true, alphas_cumprod_next = true,
  sqrt_alphas_cumprod = true, sqrt_one_minus_alphas_cumprod = true, log_one_minus_alphas_cumprod = true,
  sqrt_recip_alphas_cumprod = true, sqrt_recipm1_alphas_cumprod = true, posterior_variance = true,
  posterior_log_variance_clipped = true, posterior_mean_coef1 = true, posterior_mean_coef2 = true,
}
Diffusion.__index = function(self, k)
  local m = Diffusion[k]
  if m ~= nil then return m end
  if EXPOSED[k] then
    local t = ad.tensor(rawget(self, "_arr")[k], { dtype = "f64" })
    rawset(self, k, t)
    return t
  end
  return nil
end

local function map(arr, f)
  local out = {}
  for i = 1, #arr do out[i] = f(arr[i], i) end
  return out
end

--- GaussianDiffusion.new{betas=, model_mean_type=, model_var_type=, loss_type=,
-- rescale_timesteps=false, use_timesteps=nil, noise_fn=nil, generator=nil}
-- betas: Lua list or 1-D tensor (float64 is kept). use_timesteps: list of
-- original 0-based timesteps to keep (SpacedDiffusion); nil keeps all.
function Diffusion.new(opts)
  local fname = "GaussianDiffusion"
  opts = opts or {}
  local betas = opts.betas
  if ad.is_tensor(betas) then
    if betas:dim() ~= 1 then fail(fname, "betas must be 1-D, got shape %s", shape_str(betas:shape())) end
    betas = betas:double():tolist()
  end
  if type(betas) ~= "table" or #betas == 0 then fail(fname, "betas must be a non-empty list or 1-D tensor") end
  for i, b in ipairs(betas) do
    if type(b) ~= "number" or not (b > 0 and b <= 1) then
      fail(fname, "betas must be in (0, 1], got betas[%d] = %s", i, tostring(b))
    end
  end

  local self = setmetatable({}, Diffusion)
  self.model_mean_type = check_enum(fname, "model_mean_type", opts.model_mean_type or "epsilon", M.ModelMeanType)
  self.model_var_type = check_enum(fname, "model_var_type", opts.model_var_type or "fixed_large", M.ModelVarType)
  self.loss_type = check_enum(fname, "loss_type", opts.loss_type or "mse", M.LossType)
  self.rescale_timesteps = opts.rescale_timesteps and true or false
  self.noise_fn = opts.noise_fn
  self.generator = opts.generator
  self.original_num_steps = #betas

  local tmap = {}
  if opts.use_timesteps then
    -- SpacedDiffusion: betas from the base process's alphas_cumprod
    local keep = {}
    for _, s in ipairs(opts.use_timesteps) do keep[s] = true end
    local last, new_betas, ac = 1.0, {}, 1.0
    for i = 1, #betas do
      ac = ac * (1.0 - betas[i])
      if keep[i - 1] then
        new_betas[#new_betas + 1] = 1 - ac / last
        last = ac
        tmap[#tmap + 1] = i - 1
      end
    end
    if #new_betas == 0 then fail(fname, "use_timesteps keeps none of the %d timesteps", #betas) end
    betas = new_betas
  else
    for i = 1, #betas do tmap[i] = i - 1 end
  end
  self.timestep_map = setmetatable(tmap, IntList)

  local T = #betas
  if T < 2 then fail(fname, "the process needs at least 2 timesteps, got %d", T) end
  self.num_timesteps = T

  -- float64 schedule arrays, computed as guided-diffusion does (NumPy order)
  local a = {}
  a.betas = { table.unpack(betas) }
  local alphas = map(betas, function(b) return 1.0 - b end)
  local ac, acc = {}, 1.0
  for i = 1, T do acc = acc * alphas[i]; ac[i] = acc end
  a.alphas_cumprod = ac
  a.alphas_cumprod_prev = map(ac, function(_, i) return i == 1 and 1.0 or ac[i - 1] end)
  a.alphas_cumprod_next = map(ac, function(_, i) return i == T and 0.0 or ac[i + 1] end)
  a.sqrt_alphas_cumprod = map(ac, function(v) return math.sqrt(v) end)
  a.one_minus_alphas_cumprod = map(ac, function(v) return 1.0 - v end)
  a.sqrt_one_minus_alphas_cumprod = map(ac, function(v) return math.sqrt(1.0 - v) end)
  a.log_one_minus_alphas_cumprod = map(ac, function(v) return math.log(1.0 - v) end)
  a.sqrt_recip_alphas_cumprod = map(ac, function(v) return math.sqrt(1.0 / v) end)
  a.sqrt_recipm1_alphas_cumprod = map(ac, function(v) return math.sqrt(1.0 / v - 1) end)
  local acp = a.alphas_cumprod_prev
  a.posterior_variance = map(betas, function(b, i) return b * (1.0 - acp[i]) / (1.0 - ac[i]) end)
  local pv = a.posterior_variance
  a.posterior_log_variance_clipped = map(pv, function(v, i) return math.log(i == 1 and pv[2] or v) end)
  a.posterior_mean_coef1 = map(betas, function(b, i) return b * math.sqrt(acp[i]) / (1.0 - ac[i]) end)
  a.posterior_mean_coef2 = map(betas, function(_, i) return (1.0 - acp[i]) * math.sqrt(alphas[i]) / (1.0 - ac[i]) end)
  -- derived arrays p_mean_variance and _predict_xstart_from_xprev gather from
  a.log_betas = map(betas, function(b) return math.log(b) end)
  a.fixed_large_variance = map(betas, function(b, i) return i == 1 and pv[2] or b end)
  a.fixed_large_log_variance = map(a.fixed_large_variance, function(v) return math.log(v) end)
  a.recip_posterior_mean_coef1 = map(a.posterior_mean_coef1, function(c) return 1.0 / c end)
  a.coef2_over_coef1 = map(a.posterior_mean_coef2, function(c2, i) return c2 / a.posterior_mean_coef1[i] end)
  self._arr = a
  return self
end

function Diffusion:__tostring()
  return string.format("GaussianDiffusion(num_timesteps=%d, original_num_steps=%d, mean=%s, var=%s, loss=%s%s)",
    self.num_timesteps, self.original_num_steps, self.model_mean_type, self.model_var_type, self.loss_type,
    self.rescale_timesteps and ", rescale_timesteps" or "")
end

------------------------------------------------------------------------------
-- helpers

-- t -> Lua list of 0-based step indices, checked against the batch size n.
function Diffusion:_steps(fname, t, n)
  local vals
  if ad.is_tensor(t) then
    if t:dim() ~= 1 then
      fail(fname, "t must be a 1-D tensor of %d timestep indices, got shape %s", n, shape_str(t:shape()))
    end
    vals = t:tolist()
  elseif type(t) == "table" then
    vals = t
  elseif type(t) == "number" then
    vals = {}
    for i = 1, n do vals[i] = t end
  else
    fail(fname, "t must be an i64 tensor of timestep indices, got %s", type(t))
  end
  if #vals ~= n then fail(fname, "t has %d timesteps but the batch has %d samples", #vals, n) end
  local out = {}
  for i, v in ipairs(vals) do
    local iv = math.tointeger(v)
    if not iv then fail(fname, "timestep t[%d] = %s is not an integer", i, tostring(v)) end
    if iv < 0 or iv >= self.num_timesteps then
      fail(fname, "timestep t[%d] = %d out of range [0, %d]", i, iv, self.num_timesteps - 1)
    end
    out[i] = iv
  end
  return out
end

-- _extract_into_tensor: arr[steps] as an (N, 1, ..., 1) tensor of like's dtype and device.
local function extract(arr, steps, like)
  local vals = {}
  for i, s in ipairs(steps) do vals[i] = arr[s + 1] end
  local shape = { #steps }
  for _ = 2, like:dim() do shape[#shape + 1] = 1 end
  local dev = like:device()
  return ad.tensor(vals, { dtype = like:dtype(), device = dev ~= "cpu" and dev or nil }):view(shape)
end
function Diffusion:_extract(name, steps, like)
  return extract(self._arr[name], steps, like)
end

-- (N, 1, ..., 1) mask: 1 where t != 0
local function nonzero_mask(steps, like)
  local m = {}
  for i, s in ipairs(steps) do m[i] = s ~= 0 and 1 or 0 end
  return extract(m, map(steps, function(_, i) return i - 1 end), like)
end

-- the timesteps the model sees
function Diffusion:_model_timesteps(steps, like)
  local mapped = {}
  for i, s in ipairs(steps) do mapped[i] = self.timestep_map[s + 1] end
  local dev = like:device()
  dev = dev ~= "cpu" and dev or nil
  if self.rescale_timesteps then
    return ad.tensor(mapped, { dtype = "f32", device = dev }) * (1000.0 / self.original_num_steps)
  end
  return ad.tensor(mapped, { dtype = "i64", device = dev })
end

local function is_module(m) return type(m) == "table" and type(m.forward) == "function" end

local function call_model(model, x, t_model, kwargs)
  if is_module(model) then return model(x, t_model, kwargs.y, kwargs) end
  return model(x, t_model, kwargs)
end
M.call_model = call_model

function Diffusion:_noise(opts, like)
  local fn = (opts and opts.noise_fn) or self.noise_fn
  if fn then
    local n = fn(like)
    if not ad.is_tensor(n) then error("noise_fn must return a tensor, got " .. type(n), 3) end
    local a, b = n:shape(), like:shape()
    if shape_str(a) ~= shape_str(b) then
      error(string.format("noise_fn returned shape %s, expected %s", shape_str(a), shape_str(b)), 3)
    end
    if n:dtype() ~= like:dtype() then n = n:to(like:dtype()) end
    return n
  end
  local gen = (opts and opts.generator) or self.generator
  return ad.randn_like(like, gen and { generator = gen } or nil)
end

local function same_shape(a, b) return shape_str(a:shape()) == shape_str(b:shape()) end

local function check_tensor(fname, name, v)
  if not ad.is_tensor(v) then fail(fname, "%s must be a tensor, got %s", name, type(v)) end
  if v:dim() < 1 then fail(fname, "%s must have a batch dimension, got a 0-d tensor", name) end
end

------------------------------------------------------------------------------
-- the forward process

--- q(x_t | x_0): mean, variance, log_variance (all shaped like x_start)
function Diffusion:q_mean_variance(x_start, t)
  check_tensor("q_mean_variance", "x_start", x_start)
  local s = self:_steps("q_mean_variance", t, x_start:shape()[1])
  local mean = self:_extract("sqrt_alphas_cumprod", s, x_start) * x_start
  local variance = self:_extract("one_minus_alphas_cumprod", s, x_start):expand(x_start:shape())
  local log_variance = self:_extract("log_one_minus_alphas_cumprod", s, x_start):expand(x_start:shape())
  return mean, variance, log_variance
end

--- Sample from q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise.
-- noise: a tensor like x_start, or nil to draw one (opts.noise_fn / generator).
function Diffusion:q_sample(x_start, t, noise, opts)
  check_tensor("q_sample", "x_start", x_start)
  local s = self:_steps("q_sample", t, x_start:shape()[1])
  if noise == nil then noise = self:_noise(opts, x_start) end
  if not ad.is_tensor(noise) or not same_shape(noise, x_start) then
    fail("q_sample", "noise must be a tensor shaped like x_start %s, got %s", shape_str(x_start:shape()),
      ad.is_tensor(noise) and shape_str(noise:shape()) or type(noise))
  end
  return self:_extract("sqrt_alphas_cumprod", s, x_start) * x_start
       + self:_extract("sqrt_one_minus_alphas_cumprod", s, x_start) * noise
end

--- q(x_{t-1} | x_t, x_0): posterior mean, variance, log_variance_clipped
function Diffusion:q_posterior_mean_variance(x_start, x_t, t, steps)
  check_tensor("q_posterior_mean_variance", "x_start", x_start)
  if not ad.is_tensor(x_t) or not same_shape(x_start, x_t) then
    fail("q_posterior_mean_variance", "x_t must be a tensor shaped like x_start %s", shape_str(x_start:shape()))
  end
  local s = steps or self:_steps("q_posterior_mean_variance", t, x_t:shape()[1])
  local mean = self:_extract("posterior_mean_coef1", s, x_t) * x_start
             + self:_extract("posterior_mean_coef2", s, x_t) * x_t
  local var = self:_extract("posterior_variance", s, x_t):expand(x_t:shape())
  local logvar = self:_extract("posterior_log_variance_clipped", s, x_t):expand(x_t:shape())
  return mean, var, logvar
end

function Diffusion:predict_xstart_from_eps(x_t, t, eps, steps)
  if not (ad.is_tensor(eps) and ad.is_tensor(x_t) and same_shape(x_t, eps)) then
    fail("predict_xstart_from_eps", "x_t and eps must be tensors of the same shape")
  end
  local s = steps or self:_steps("predict_xstart_from_eps", t, x_t:shape()[1])
  return self:_extract("sqrt_recip_alphas_cumprod", s, x_t) * x_t
       - self:_extract("sqrt_recipm1_alphas_cumprod", s, x_t) * eps
end

function Diffusion:predict_xstart_from_xprev(x_t, t, xprev, steps)
  if not (ad.is_tensor(xprev) and ad.is_tensor(x_t) and same_shape(x_t, xprev)) then
    fail("predict_xstart_from_xprev", "x_t and xprev must be tensors of the same shape")
  end
  local s = steps or self:_steps("predict_xstart_from_xprev", t, x_t:shape()[1])
  return self:_extract("recip_posterior_mean_coef1", s, x_t) * xprev
       - self:_extract("coef2_over_coef1", s, x_t) * x_t
end

function Diffusion:predict_eps_from_xstart(x_t, t, pred_xstart, steps)
  local s = steps or self:_steps("predict_eps_from_xstart", t, x_t:shape()[1])
  return (self:_extract("sqrt_recip_alphas_cumprod", s, x_t) * x_t - pred_xstart)
       / self:_extract("sqrt_recipm1_alphas_cumprod", s, x_t)
end
-- guided-diffusion's private names
Diffusion._predict_xstart_from_eps = Diffusion.predict_xstart_from_eps
Diffusion._predict_xstart_from_xprev = Diffusion.predict_xstart_from_xprev
Diffusion._predict_eps_from_xstart = Diffusion.predict_eps_from_xstart

--- What the model receives for step indices t (i64 tensor of 0-based indices).
function Diffusion:model_timesteps(t, n)
  local like = ad.zeros(1)
  return self:_model_timesteps(self:_steps("model_timesteps", t, n or (ad.is_tensor(t) and t:shape()[1] or #t)), like)
end

------------------------------------------------------------------------------
-- the reverse process

-- p_mean_variance from a model output already computed (steps: checked list)
function Diffusion:_p_mean_variance_from_output(fname, model_output, x, steps, opts)
  local shape = x:shape()
  local B, C = shape[1], shape[2]
  local model_var_values, model_variance, model_log_variance
  local out_shape = model_output:shape()
  if self.model_var_type == "learned" or self.model_var_type == "learned_range" then
    local want = { B, 2 * C, table.unpack(shape, 3) }
    if shape_str(out_shape) ~= shape_str(want) then
      fail(fname, "with learned sigma the model output must have shape %s (2x the input channels), got %s",
        shape_str(want), shape_str(out_shape))
    end
    model_var_values = model_output:narrow(2, C + 1, C)
    model_output = model_output:narrow(2, 1, C)
    if self.model_var_type == "learned" then
      model_log_variance = model_var_values
      model_variance = model_log_variance:exp()
    else
      local min_log = self:_extract("posterior_log_variance_clipped", steps, x)
      local max_log = self:_extract("log_betas", steps, x)
      -- model_var_values in [-1, 1] spans [min_var, max_var]
      local frac = (model_var_values + 1) / 2
      model_log_variance = frac * max_log + (1 - frac) * min_log
      model_variance = model_log_variance:exp()
    end
  else
    if shape_str(out_shape) ~= shape_str(shape) then
      fail(fname, "the model output must have the input's shape %s, got %s", shape_str(shape), shape_str(out_shape))
    end
    local vname, lname
    if self.model_var_type == "fixed_large" then
      vname, lname = "fixed_large_variance", "fixed_large_log_variance"
    else
      vname, lname = "posterior_variance", "posterior_log_variance_clipped"
    end
    model_variance = self:_extract(vname, steps, x):expand(shape)
    model_log_variance = self:_extract(lname, steps, x):expand(shape)
  end

  local clip = opts.clip_denoised
  if clip == nil then clip = true end
  local denoised_fn = opts.denoised_fn
  local function process_xstart(v)
    if denoised_fn then v = denoised_fn(v) end
    if clip then return v:clamp(-1, 1) end
    return v
  end

  local pred_xstart, model_mean
  if self.model_mean_type == "previous_x" then
    pred_xstart = process_xstart(self:predict_xstart_from_xprev(x, nil, model_output, steps))
    model_mean = model_output
  else
    if self.model_mean_type == "start_x" then
      pred_xstart = process_xstart(model_output)
    else
      pred_xstart = process_xstart(self:predict_xstart_from_eps(x, nil, model_output, steps))
    end
    model_mean = self:q_posterior_mean_variance(pred_xstart, x, nil, steps)
  end
  return { mean = model_mean, variance = model_variance, log_variance = model_log_variance,
           pred_xstart = pred_xstart, model_output = model_output, model_var_values = model_var_values }
end

--- p(x_{t-1} | x_t) and the x_0 prediction.
-- opts: clip_denoised (true), denoised_fn (applied to pred_xstart before the clip),
-- model_kwargs ({}; .y goes to ADM). Returns {mean=, variance=, log_variance=,
-- pred_xstart=, model_output=} (model_output: the mean part of the raw output).
function Diffusion:p_mean_variance(model, x, t, opts)
  opts = opts or {}
  check_tensor("p_mean_variance", "x", x)
  if x:dim() < 2 then fail("p_mean_variance", "x must be (N, C, ...), got shape %s", shape_str(x:shape())) end
  local steps = self:_steps("p_mean_variance", t, x:shape()[1])
  local kwargs = opts.model_kwargs or {}
  local out = call_model(model, x, self:_model_timesteps(steps, x), kwargs)
  if not ad.is_tensor(out) then fail("p_mean_variance", "the model must return a tensor, got %s", type(out)) end
  return self:_p_mean_variance_from_output("p_mean_variance", out, x, steps, opts)
end

--- Classifier guidance on the mean (Sohl-Dickstein et al.): mean + variance * grad.
-- cond_fn(x, t_model, y, model_kwargs) returns d log p(y|x) / dx. The sampling
-- loops run under no_grad, so cond_fn computes its gradient inside
-- ad.enable_grad(function() ... end), as guided-diffusion's classifier_sample.py.
function Diffusion:condition_mean(cond_fn, p_mean_var, x, t, opts)
  local kwargs = (opts and opts.model_kwargs) or {}
  local steps = self:_steps("condition_mean", t, x:shape()[1])
  local gradient = cond_fn(x, self:_model_timesteps(steps, x), kwargs.y, kwargs)
  local mean = p_mean_var.mean
  if not ad.is_tensor(gradient) or not same_shape(gradient, x) then
    fail("condition_mean", "cond_fn must return a gradient shaped like x %s", shape_str(x:shape()))
  end
  if gradient:dtype() ~= mean:dtype() then gradient = gradient:to(mean:dtype()) end
  return mean + p_mean_var.variance * gradient
end

--- Classifier guidance on the score (Song et al. 2020), as condition_score.
function Diffusion:condition_score(cond_fn, p_mean_var, x, t, opts)
  local kwargs = (opts and opts.model_kwargs) or {}
  local steps = self:_steps("condition_score", t, x:shape()[1])
  local alpha_bar = self:_extract("alphas_cumprod", steps, x)
  local eps = self:predict_eps_from_xstart(x, nil, p_mean_var.pred_xstart, steps)
  local gradient = cond_fn(x, self:_model_timesteps(steps, x), kwargs.y, kwargs)
  if not ad.is_tensor(gradient) or not same_shape(gradient, x) then
    fail("condition_score", "cond_fn must return a gradient shaped like x %s", shape_str(x:shape()))
  end
  if gradient:dtype() ~= eps:dtype() then gradient = gradient:to(eps:dtype()) end
  eps = eps - (1 - alpha_bar):sqrt() * gradient
  local out = {}
  for k, v in pairs(p_mean_var) do out[k] = v end
  out.pred_xstart = self:predict_xstart_from_eps(x, nil, eps, steps)
  out.mean = self:q_posterior_mean_variance(out.pred_xstart, x, nil, steps)
  return out
end

--- One ancestral step x_t -> x_{t-1}: {sample=, pred_xstart=}.
-- opts: clip_denoised, denoised_fn, cond_fn, model_kwargs, noise_fn, generator.
function Diffusion:p_sample(model, x, t, opts)
  opts = opts or {}
  local out = self:p_mean_variance(model, x, t, opts)
  local steps = self:_steps("p_sample", t, x:shape()[1])
  local noise = self:_noise(opts, x)
  local mask = nonzero_mask(steps, x)   -- no noise when t == 0
  if opts.cond_fn then out.mean = self:condition_mean(opts.cond_fn, out, x, t, opts) end
  local sample = out.mean + mask * (0.5 * out.log_variance):exp() * noise
  return { sample = sample, pred_xstart = out.pred_xstart, model_output = out.model_output }
end

-- progress bar on stderr: shown when progress == true, or when it is nil and
-- stderr is a terminal
local stderr_tty
local function want_progress(p)
  if p ~= nil then return p and true or false end
  if stderr_tty == nil then
    local ok = os.execute("test -t 2")
    stderr_tty = ok == true
  end
  return stderr_tty
end

local function progress_bar(n, label, enabled)
  if not enabled or n < 2 then return function() end end
  local t0, width = os.time(), 30
  return function(i)
    local filled = math.floor(width * i / n)
    local el = os.time() - t0
    local eta = i > 0 and math.floor(el * (n - i) / i) or 0
    io.stderr:write(string.format("\r%s %3d%% |%s%s| %d/%d [%ds<%ds]", label, math.floor(100 * i / n),
      string.rep("#", filled), string.rep(" ", width - filled), i, n, el, eta))
    if i >= n then io.stderr:write("\n") end
    io.stderr:flush()
  end
end

-- the starting image of a loop
function Diffusion:_loop_init(fname, model, shape, opts)
  if type(shape) ~= "table" or #shape < 2 then
    fail(fname, "shape must be a table like {N, C, H, W}, got %s", type(shape) == "table" and shape_str(shape) or type(shape))
  end
  for i, v in ipairs(shape) do
    if math.type(v) ~= "integer" or v < 1 then fail(fname, "shape[%d] must be a positive integer, got %s", i, tostring(v)) end
  end
  if opts.noise ~= nil then
    if not ad.is_tensor(opts.noise) or shape_str(opts.noise:shape()) ~= shape_str(shape) then
      fail(fname, "noise must be a tensor of shape %s, got %s", shape_str(shape),
        ad.is_tensor(opts.noise) and shape_str(opts.noise:shape()) or type(opts.noise))
    end
    return opts.noise
  end
  local dtype, device = opts.dtype, opts.device
  if (not dtype or not device) and is_module(model) and model.parameters then
    local p = model:parameters()[1]
    if p then dtype = dtype or p:dtype(); device = device or p:device() end
  end
  if dtype == "f16" or dtype == "bf16" then dtype = "f32" end
  local gen = opts.generator or self.generator
  return ad.randn(shape, { dtype = dtype or "f32", device = device, generator = gen })
end

local function loop_progressive(self, fname, step_fn, model, shape, opts)
  opts = opts or {}
  local img = self:_loop_init(fname, model, shape, opts)
  local n = shape[1]
  local T = self.num_timesteps
  local i = T
  local bar = progress_bar(T, fname, want_progress(opts.progress))
  bar(0)
  return function()
    if i <= 0 then return nil end
    i = i - 1
    local t = ad.full({ n }, i, { dtype = "i64" })
    local out = ad.no_grad(step_fn, self, model, img, t, opts)
    img = out.sample
    out.t = i
    bar(T - i)
    return out
  end
end

--- Iterator over the ancestral sampling steps: for out in d:p_sample_loop_progressive(model, shape, opts) do ... end
-- Each out is p_sample's {sample=, pred_xstart=, model_output=} plus t (the step index).
-- opts: noise (x_T), clip_denoised, denoised_fn, cond_fn, model_kwargs, noise_fn,
-- generator, dtype, device, progress (nil: a bar on stderr when it is a terminal).
function Diffusion:p_sample_loop_progressive(model, shape, opts)
  return loop_progressive(self, "p_sample_loop", Diffusion.p_sample, model, shape, opts)
end

--- Samples from the model (no grad). opts as p_sample_loop_progressive, plus
-- callback(out, i) called after every step (i = 1 .. num_timesteps).
function Diffusion:p_sample_loop(model, shape, opts)
  opts = opts or {}
  local final, k = nil, 0
  for out in self:p_sample_loop_progressive(model, shape, opts) do
    k = k + 1
    if opts.callback then opts.callback(out, k) end
    final = out
  end
  return final.sample
end

--- One DDIM step (Song et al. eq. 12) with eta: {sample=, pred_xstart=}.
function Diffusion:ddim_sample(model, x, t, opts)
  opts = opts or {}
  local eta = opts.eta or 0.0
  local out = self:p_mean_variance(model, x, t, opts)
  local steps = self:_steps("ddim_sample", t, x:shape()[1])
  if opts.cond_fn then out = self:condition_score(opts.cond_fn, out, x, t, opts) end
  -- re-derive eps in case the model predicts x_0 or x_{t-1}
  local eps = self:predict_eps_from_xstart(x, nil, out.pred_xstart, steps)
  local alpha_bar = self:_extract("alphas_cumprod", steps, x)
  local alpha_bar_prev = self:_extract("alphas_cumprod_prev", steps, x)
  local sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)):sqrt() * (1 - alpha_bar / alpha_bar_prev):sqrt()
  local noise = self:_noise(opts, x)
  local mean_pred = out.pred_xstart * alpha_bar_prev:sqrt() + (1 - alpha_bar_prev - sigma * sigma):sqrt() * eps
  local mask = nonzero_mask(steps, x)
  local sample = mean_pred + mask * sigma * noise
  return { sample = sample, pred_xstart = out.pred_xstart, model_output = out.model_output }
end

--- One deterministic DDIM step towards noise, x_t -> x_{t+1} (eta must be 0).
function Diffusion:ddim_reverse_sample(model, x, t, opts)
  opts = opts or {}
  if (opts.eta or 0.0) ~= 0.0 then fail("ddim_reverse_sample", "the reverse ODE needs eta = 0, got %s", tostring(opts.eta)) end
  local out = self:p_mean_variance(model, x, t, opts)
  local steps = self:_steps("ddim_reverse_sample", t, x:shape()[1])
  local eps = (self:_extract("sqrt_recip_alphas_cumprod", steps, x) * x - out.pred_xstart)
            / self:_extract("sqrt_recipm1_alphas_cumprod", steps, x)
  local alpha_bar_next = self:_extract("alphas_cumprod_next", steps, x)
  local mean_pred = out.pred_xstart * alpha_bar_next:sqrt() + (1 - alpha_bar_next):sqrt() * eps
  return { sample = mean_pred, pred_xstart = out.pred_xstart }
end

--- Iterator over DDIM steps; opts as p_sample_loop_progressive plus eta (0).
function Diffusion:ddim_sample_loop_progressive(model, shape, opts)
  return loop_progressive(self, "ddim_sample_loop", Diffusion.ddim_sample, model, shape, opts)
end

--- DDIM samples (no grad); opts as p_sample_loop plus eta (0).
function Diffusion:ddim_sample_loop(model, shape, opts)
  opts = opts or {}
  local final, k = nil, 0
  for out in self:ddim_sample_loop_progressive(model, shape, opts) do
    k = k + 1
    if opts.callback then opts.callback(out, k) end
    final = out
  end
  return final.sample
end

------------------------------------------------------------------------------
-- losses

-- one VLB term in bits per dim: {output=(N), pred_xstart=}; model_output given
-- directly (the hybrid loss's frozen output) or computed by calling model
function Diffusion:_vb_terms_bpd(model, x_start, x_t, t, opts, steps, model_output)
  opts = opts or {}
  steps = steps or self:_steps("_vb_terms_bpd", t, x_start:shape()[1])
  local true_mean, _, true_log_variance_clipped = self:q_posterior_mean_variance(x_start, x_t, nil, steps)
  local out
  if model_output then
    out = self:_p_mean_variance_from_output("training_losses", model_output, x_t, steps, opts)
  else
    local kwargs = opts.model_kwargs or {}
    local mo = call_model(model, x_t, self:_model_timesteps(steps, x_t), kwargs)
    out = self:_p_mean_variance_from_output("training_losses", mo, x_t, steps, opts)
  end
  local kl = losses.normal_kl(true_mean, true_log_variance_clipped, out.mean, out.log_variance)
  kl = losses.mean_flat(kl) / LOG2
  local decoder_nll = -losses.discretized_gaussian_log_likelihood(x_start,
    { means = out.mean, log_scales = 0.5 * out.log_variance })
  decoder_nll = losses.mean_flat(decoder_nll) / LOG2
  -- the decoder NLL at the first step, KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) elsewhere
  local first = {}
  for i, s in ipairs(steps) do first[i] = s == 0 end
  local dev = x_t:device()
  local is_first = ad.tensor(first, { dtype = "bool", device = dev ~= "cpu" and dev or nil })
  return { output = ad.where(is_first, decoder_nll, kl), pred_xstart = out.pred_xstart }
end

--- Training losses for one batch: {loss=, mse=, vb=} per-sample (N) tensors
-- (vb only with learned sigma; loss only for the KL losses). Also returns x_t,
-- model_output (the mean part, with grad) and pred_xstart (from model_output,
-- unclipped, with grad), which adversarial fine-tuning needs.
-- opts: model_kwargs, noise (else drawn with noise_fn / generator).
function Diffusion:training_losses(model, x_start, t, opts)
  opts = opts or {}
  check_tensor("training_losses", "x_start", x_start)
  if x_start:dim() < 2 then fail("training_losses", "x_start must be (N, C, ...), got shape %s", shape_str(x_start:shape())) end
  local steps = self:_steps("training_losses", t, x_start:shape()[1])
  local kwargs = opts.model_kwargs or {}
  local noise = opts.noise
  if noise == nil then noise = self:_noise(opts, x_start) end
  if not ad.is_tensor(noise) or not same_shape(noise, x_start) then
    fail("training_losses", "noise must be a tensor shaped like x_start %s", shape_str(x_start:shape()))
  end
  local x_t = self:q_sample(x_start, steps, noise)
  local terms = { x_t = x_t }

  if self.loss_type == "kl" or self.loss_type == "rescaled_kl" then
    local vb = self:_vb_terms_bpd(model, x_start, x_t, nil, { clip_denoised = false, model_kwargs = kwargs }, steps)
    terms.loss = vb.output
    terms.pred_xstart = vb.pred_xstart
    if self.loss_type == "rescaled_kl" then terms.loss = terms.loss * self.num_timesteps end
    return terms
  end

  local model_output = call_model(model, x_t, self:_model_timesteps(steps, x_t), kwargs)
  if not ad.is_tensor(model_output) then fail("training_losses", "the model must return a tensor, got %s", type(model_output)) end
  local shape = x_t:shape()
  local C = shape[2]
  if self.model_var_type == "learned" or self.model_var_type == "learned_range" then
    local want = { shape[1], 2 * C, table.unpack(shape, 3) }
    if shape_str(model_output:shape()) ~= shape_str(want) then
      fail("training_losses", "with learned sigma the model output must have shape %s (2x the input channels), got %s",
        shape_str(want), shape_str(model_output:shape()))
    end
    local var_values = model_output:narrow(2, C + 1, C)
    model_output = model_output:narrow(2, 1, C)
    -- learn the variance with the VLB without letting it move the mean
    local frozen_out = ad.cat({ model_output:detach(), var_values }, 2)
    terms.vb = self:_vb_terms_bpd(nil, x_start, x_t, nil, { clip_denoised = false }, steps, frozen_out).output
    if self.loss_type == "rescaled_mse" then
      -- /1000 for equivalence with the initial implementation
      terms.vb = terms.vb * (self.num_timesteps / 1000.0)
    end
  elseif shape_str(model_output:shape()) ~= shape_str(shape) then
    fail("training_losses", "the model output must have the input's shape %s, got %s", shape_str(shape),
      shape_str(model_output:shape()))
  end

  local target
  if self.model_mean_type == "previous_x" then
    target = self:q_posterior_mean_variance(x_start, x_t, nil, steps)
    terms.pred_xstart = self:predict_xstart_from_xprev(x_t, nil, model_output, steps)
  elseif self.model_mean_type == "start_x" then
    target = x_start
    terms.pred_xstart = model_output
  else
    target = noise
    terms.pred_xstart = self:predict_xstart_from_eps(x_t, nil, model_output, steps)
  end
  local d = target - model_output
  terms.mse = losses.mean_flat(d * d)
  terms.loss = terms.vb and (terms.mse + terms.vb) or terms.mse
  terms.model_output = model_output
  return terms
end

--- KL(q(x_T | x_0) || N(0, I)) in bits per dim, per sample.
function Diffusion:prior_bpd(x_start)
  local n = x_start:shape()[1]
  local t = {}
  for i = 1, n do t[i] = self.num_timesteps - 1 end
  local qt_mean, _, qt_log_variance = self:q_mean_variance(x_start, t)
  return losses.mean_flat(losses.normal_kl(qt_mean, qt_log_variance, 0.0, 0.0)) / LOG2
end
Diffusion._prior_bpd = Diffusion.prior_bpd

--- The whole VLB in bits per dim: {total_bpd=, prior_bpd=, vb=, xstart_mse=, mse=}
-- (vb, xstart_mse, mse are (N, T)). opts: clip_denoised (true), model_kwargs, noise_fn, generator.
function Diffusion:calc_bpd_loop(model, x_start, opts)
  opts = opts or {}
  local n = x_start:shape()[1]
  local vb, xstart_mse, mse = {}, {}, {}
  for t = self.num_timesteps - 1, 0, -1 do
    local steps = {}
    for i = 1, n do steps[i] = t end
    local noise = self:_noise(opts, x_start)
    local x_t = self:q_sample(x_start, steps, noise)
    local out = ad.no_grad(function()
      return self:_vb_terms_bpd(model, x_start, x_t, nil,
        { clip_denoised = opts.clip_denoised ~= false, model_kwargs = opts.model_kwargs }, steps)
    end)
    vb[t + 1] = out.output
    local dx = out.pred_xstart - x_start
    xstart_mse[t + 1] = losses.mean_flat(dx * dx)
    local eps = self:predict_eps_from_xstart(x_t, nil, out.pred_xstart, steps)
    local de = eps - noise
    mse[t + 1] = losses.mean_flat(de * de)
  end
  vb, xstart_mse, mse = ad.stack(vb, 2), ad.stack(xstart_mse, 2), ad.stack(mse, 2)
  local prior = self:prior_bpd(x_start)
  return { total_bpd = vb:sum(2) + prior, prior_bpd = prior, vb = vb, xstart_mse = xstart_mse, mse = mse }
end

return M
