--- advdiff.amp: automatic mixed precision, as ad.amp.
--
-- Autocast (also ad.autocast), with PyTorch's op lists: inside the scope, conv2d/conv1d, matmul,
-- bmm, linear and scaled_dot_product_attention run in bf16 or f16 (their float inputs are cast,
-- differentiably); group_norm, layer_norm, softmax, log_softmax and the losses (mse_loss, l1_loss,
-- binary_cross_entropy_with_logits, cross_entropy, nll_loss) upcast f16/bf16 inputs and compute
-- and return f32; batch_norm computes in f32 and returns its input's dtype (on neither list, as in
-- PyTorch); everything else (elementwise ops, reductions) keeps the dtype it gets. f64 inputs are
-- never cast. Parameters stay f32 and get f32 gradients (the casts are recorded ops).
--   ad.amp.autocast("bf16", function() ... end)
--   do local s <close> = ad.amp.autocast{dtype = "f16"}; ... end     -- or s:close()
--
-- GradScaler: dynamic loss scaling for f16 training (bf16 does not need it).
--   local scaler = ad.amp.GradScaler{init_scale = 2^16, growth_factor = 2, backoff_factor = 0.5,
--                                   growth_interval = 2000, enabled = true}
--   scaler:scale(loss):backward()
--   scaler:unscale_(opt)          -- optional: before gradient clipping
--   scaler:step(opt)              -- skips opt:step() when a gradient is inf/NaN
--   scaler:update()               -- halves the scale after a skipped step, doubles it after
--                                 -- growth_interval clean steps
--   scaler:state_dict(), scaler:load_state_dict(sd), scaler:get_scale()
-- Optimizers are ad.optim's (param_groups of {params = {...}}); any table with param_groups
-- and a step method works. Without an explicit unscale_, the unscale is fused into the
-- optimizer's step (step{grad_scale = scale}).
local core = require "advdiff.core"

local M = {}

M.autocast = core.autocast
M.is_autocast_enabled = core.is_autocast_enabled
M.get_autocast_dtype = core.get_autocast_dtype

local GradScaler = {}
GradScaler.__index = GradScaler

local function check_positive(name, v)
  if type(v) ~= "number" or not (v > 0) then
    error(string.format("GradScaler: option '%s' must be a positive number, got %s", name, tostring(v)), 3)
  end
  return v
end

--- GradScaler{init_scale=65536, growth_factor=2, backoff_factor=0.5, growth_interval=2000, enabled=true}
function M.GradScaler(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("GradScaler: expected an options table", 2) end
  local self = setmetatable({}, GradScaler)
  self._scale = check_positive("init_scale", opts.init_scale or 65536.0)
  self._growth_factor = check_positive("growth_factor", opts.growth_factor or 2.0)
  self._backoff_factor = check_positive("backoff_factor", opts.backoff_factor or 0.5)
  if self._growth_factor <= 1 then error("GradScaler: growth_factor must be > 1", 2) end
  if self._backoff_factor >= 1 then error("GradScaler: backoff_factor must be < 1", 2) end
  local gi = opts.growth_interval or 2000
  if math.type(gi) ~= "integer" or gi < 1 then error("GradScaler: growth_interval must be a positive integer", 2) end
  self._growth_interval = gi
  self._enabled = opts.enabled ~= false
  self._growth_tracker = 0
  self._per_opt = setmetatable({}, { __mode = "k" })   -- optimizer -> {unscaled=, found_inf=}
  return self
end

function GradScaler:is_enabled() return self._enabled end
function GradScaler:get_scale() return self._enabled and self._scale or 1.0 end
function GradScaler:get_growth_factor() return self._growth_factor end
function GradScaler:get_backoff_factor() return self._backoff_factor end
function GradScaler:get_growth_interval() return self._growth_interval end

--- loss * scale (a tensor, so backward() sees the scaled loss)
function GradScaler:scale(loss)
  if not self._enabled then return loss end
  if not core.is_tensor(loss) then error("GradScaler:scale: expected a tensor", 2) end
  return loss * self._scale
end

local function grads_of(optimizer)
  if type(optimizer) ~= "table" or type(optimizer.param_groups) ~= "table" then
    error("GradScaler: expected an optimizer with param_groups", 3)
  end
  local grads = {}
  for _, g in ipairs(optimizer.param_groups) do
    for _, p in ipairs(g.params) do
      local gr = p.grad
      if gr then grads[#grads + 1] = gr end
    end
  end
  return grads
end

local function state_of(self, optimizer)
  local st = self._per_opt[optimizer]
  if not st then
    st = { unscaled = false, found_inf = nil }
    self._per_opt[optimizer] = st
  end
  return st
end

-- true when some gradient holds an inf or NaN (grads scaled by `scale` or not)
local function any_nonfinite(grads)
  if #grads == 0 then return false end
  local sq = core._foreach_sq_norm(grads):item()
  return sq ~= sq or sq == math.huge
end

--- Divides the optimizer's gradients by the scale, in place, and records whether any is inf/NaN.
function GradScaler:unscale_(optimizer)
  if not self._enabled then return end
  local st = state_of(self, optimizer)
  if st.unscaled then error("GradScaler:unscale_ was already called for this optimizer since the last update()", 2) end
  local grads = grads_of(optimizer)
  st.found_inf = any_nonfinite(grads)
  if not st.found_inf and #grads > 0 then core._foreach_scale_(grads, 1.0 / self._scale) end
  st.unscaled = true
end

--- Runs optimizer:step() unless a gradient is inf/NaN. Returns true when the step ran.
function GradScaler:step(optimizer, ...)
  if not self._enabled then optimizer:step(...); return true end
  local st = state_of(self, optimizer)
  if st.found_inf == nil then st.found_inf = any_nonfinite(grads_of(optimizer)) end
  if st.found_inf then return false end
  if st.unscaled then
    optimizer:step(...)
  else
    -- the unscale fused into the update: gradients are divided by the scale inside the step
    local opts = select(1, ...)
    if opts ~= nil and type(opts) ~= "table" then error("GradScaler:step: optimizer options must be a table", 2) end
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.grad_scale = self._scale * (o.grad_scale or 1)
    optimizer:step(o)
  end
  return true
end

--- Adjusts the scale: backoff after a step with inf/NaN, growth after growth_interval clean steps.
-- update(new_scale) sets the scale directly.
function GradScaler:update(new_scale)
  if not self._enabled then return end
  if new_scale ~= nil then
    self._scale = check_positive("new_scale", new_scale)
  else
    local found = false
    for _, st in pairs(self._per_opt) do if st.found_inf then found = true end end
    if found then
      self._scale = self._scale * self._backoff_factor
      self._growth_tracker = 0
    else
      self._growth_tracker = self._growth_tracker + 1
      if self._growth_tracker >= self._growth_interval then
        self._scale = self._scale * self._growth_factor
        self._growth_tracker = 0
      end
    end
  end
  self._per_opt = setmetatable({}, { __mode = "k" })
end

function GradScaler:state_dict()
  if not self._enabled then return {} end
  return { scale = self._scale, growth_factor = self._growth_factor, backoff_factor = self._backoff_factor,
           growth_interval = self._growth_interval, _growth_tracker = self._growth_tracker }
end

function GradScaler:load_state_dict(sd)
  if type(sd) ~= "table" then error("GradScaler:load_state_dict: expected a table", 2) end
  if not self._enabled then return end
  if next(sd) == nil then error("GradScaler:load_state_dict: the state dict is empty (saved from a disabled scaler?)", 2) end
  self._scale = check_positive("scale", sd.scale)
  self._growth_factor = sd.growth_factor or self._growth_factor
  self._backoff_factor = sd.backoff_factor or self._backoff_factor
  self._growth_interval = sd.growth_interval or self._growth_interval
  self._growth_tracker = sd._growth_tracker or 0
end

function GradScaler:__tostring()
  return string.format("GradScaler(scale=%g, growth_tracker=%d/%d, enabled=%s)", self._scale, self._growth_tracker,
                       self._growth_interval, tostring(self._enabled))
end

M.GradScaler_class = GradScaler
return M
