--- advdiff.optim.optimizer: the Optimizer base class, and SGD, Adam and AdamW
-- on top of the core's fused multi-tensor steps (ad._adam_step, ad._sgd_step):
-- one call updates every parameter of a group, so a step costs one core op,
-- not one per tensor.
--
-- PyTorch's conventions: param_groups is a list of {params = {...}, lr = ...,
-- <hyper-parameters>}; a group's values may be changed between steps
-- (opt.param_groups[1].lr = 1e-5 takes effect at the next step); only
-- parameters that require grad and have a .grad are updated; zero_grad sets
-- grads to nil (set_to_none) by default. state_dict() has PyTorch's layout:
-- {state = {[k] = {step=, exp_avg=, exp_avg_sq=}}, param_groups = {{lr=, ...,
-- params = {k, ...}}}} with k the 0-based position of a parameter across the
-- groups, so a state dict maps onto a new optimizer over the same parameters.
local ad = require "advdiff"

local M = {}

local Optimizer = {}
Optimizer.__index = Optimizer
M.Optimizer = Optimizer

local function is_module(v) return type(v) == "table" and type(v.parameters) == "function" end

local function fail(name, fmt, ...) error(string.format("%s: " .. fmt, name, ...), 3) end

-- params: a module, a list of tensors, or a list of groups {params = ..., opt = value}
local function to_groups(name, params)
  if is_module(params) then params = params:parameters() end
  if type(params) ~= "table" then fail(name, "params must be a module, a list of tensors or a list of groups") end
  if #params == 0 then fail(name, "got an empty parameter list") end
  if ad.is_tensor(params[1]) then return { { params = params } } end
  local groups = {}
  for i, g in ipairs(params) do
    if type(g) ~= "table" or g.params == nil then fail(name, "param group %d must be a table with a 'params' field", i) end
    local ps = g.params
    if is_module(ps) then ps = ps:parameters() end
    if ad.is_tensor(ps) then ps = { ps } end
    local ng = {}
    for k, v in pairs(g) do ng[k] = v end
    ng.params = ps
    groups[i] = ng
  end
  return groups
end

--- Optimizer.new(cls, name, params, defaults, opts): used by subclasses.
function Optimizer.new(cls, name, params, defaults, opts)
  opts = opts or {}
  local self = setmetatable({ name = name, defaults = {}, param_groups = {}, state = {} }, cls)
  for k, v in pairs(defaults) do
    if opts[k] ~= nil then self.defaults[k] = opts[k] else self.defaults[k] = v end
  end
  for k in pairs(opts) do
    if defaults[k] == nil then fail(name, "unknown option '%s'", tostring(k)) end
  end
  for _, g in ipairs(to_groups(name, params)) do self:add_param_group(g) end
  return self
end

function Optimizer:add_param_group(group)
  local seen = {}
  for _, g in ipairs(self.param_groups) do for _, p in ipairs(g.params) do seen[p] = true end end
  for i, p in ipairs(group.params) do
    if not ad.is_tensor(p) then fail(self.name, "params[%d] must be a tensor, got %s", i, type(p)) end
    if seen[p] then fail(self.name, "a parameter appears in more than one group") end
    seen[p] = true
  end
  for k, v in pairs(self.defaults) do
    if group[k] == nil then group[k] = v end
  end
  for k in pairs(group) do
    if k ~= "params" and k ~= "name" and self.defaults[k] == nil then
      fail(self.name, "unknown option '%s' in a param group", tostring(k))
    end
  end
  self:_check_group(group)
  group.initial_lr = group.initial_lr or group.lr
  self.param_groups[#self.param_groups + 1] = group
end

function Optimizer:_check_group(g)
  if type(g.lr) ~= "number" or g.lr < 0 then fail(self.name, "invalid learning rate %s", tostring(g.lr)) end
end

--- Clear the gradients: set to nil (set_to_none, the default) or zero them.
function Optimizer:zero_grad(set_to_none)
  if set_to_none == nil then set_to_none = true end
  for _, g in ipairs(self.param_groups) do
    for _, p in ipairs(g.params) do
      if set_to_none then p.grad = nil
      else local gr = p.grad; if gr then gr:zero_() end end
    end
  end
end

-- the parameters of a group that get updated: requires grad and have a gradient
local function live(group)
  local ps, gs = {}, {}
  for _, p in ipairs(group.params) do
    if p.requires_grad then
      local g = p.grad
      if g ~= nil then
        if not g:is_contiguous() then g = g:contiguous() end
        ps[#ps + 1], gs[#gs + 1] = p, g
      end
    end
  end
  return ps, gs
end
Optimizer._live = live

--- All parameters of all groups, in order.
function Optimizer:parameters()
  local out = {}
  for _, g in ipairs(self.param_groups) do for _, p in ipairs(g.params) do out[#out + 1] = p end end
  return out
end

-- optimizer state tensors: f32, or f64 for f64 parameters
local function state_like(p)
  local dt = p:dtype() == "f64" and "f64" or "f32"
  local dev = p:device()
  return ad.zeros(p:shape(), { dtype = dt, device = dev ~= "cpu" and dev or nil })
end
Optimizer._state_like = state_like

-- per-parameter state that is a tensor vs. a number: used by state_dict
function Optimizer:state_dict()
  local index, k = {}, 0
  local groups = {}
  for gi, g in ipairs(self.param_groups) do
    local ng = {}
    for key, v in pairs(g) do if key ~= "params" then ng[key] = v end end
    ng.params = {}
    for _, p in ipairs(g.params) do
      index[p] = k
      ng.params[#ng.params + 1] = k
      k = k + 1
    end
    groups[gi] = ng
  end
  local state = {}
  for p, s in pairs(self.state) do
    local i = index[p]
    if i ~= nil then
      local c = {}
      for key, v in pairs(s) do c[key] = ad.is_tensor(v) and v:detach() or v end
      state[i] = c
    end
  end
  return { state = state, param_groups = groups }
end

function Optimizer:load_state_dict(sd)
  if type(sd) ~= "table" or type(sd.param_groups) ~= "table" or type(sd.state) ~= "table" then
    error(self.name .. ".load_state_dict: expected {state=..., param_groups=...}", 2)
  end
  if #sd.param_groups ~= #self.param_groups then
    error(string.format("%s.load_state_dict: the state has %d param groups, the optimizer %d", self.name,
      #sd.param_groups, #self.param_groups), 2)
  end
  local by_index = {}
  for gi, g in ipairs(self.param_groups) do
    local sg = sd.param_groups[gi]
    if #sg.params ~= #g.params then
      error(string.format("%s.load_state_dict: param group %d has %d parameters in the state, %d here", self.name,
        gi, #sg.params, #g.params), 2)
    end
    for j, p in ipairs(g.params) do by_index[sg.params[j]] = p end
  end
  local new_state = {}
  for i, s in pairs(sd.state) do
    local p = by_index[math.tointeger(i) or i]
    if p == nil then error(string.format("%s.load_state_dict: state for unknown parameter %s", self.name, tostring(i)), 2) end
    local c = {}
    for key, v in pairs(s) do
      if ad.is_tensor(v) then
        local want = state_like(p)
        local a, b = v:shape(), want:shape()
        if table.concat(a, ",") ~= table.concat(b, ",") then
          error(string.format("%s.load_state_dict: state '%s' of parameter %s has shape [%s], the parameter [%s]",
            self.name, key, tostring(i), table.concat(a, ", "), table.concat(b, ", ")), 2)
        end
        ad.no_grad(function() want:copy_(v) end)
        c[key] = want
      else
        c[key] = v
      end
    end
    new_state[p] = c
  end
  self.state = new_state
  for gi, g in ipairs(self.param_groups) do
    for key, v in pairs(sd.param_groups[gi]) do
      if key ~= "params" then g[key] = v end
    end
  end
end

function Optimizer:__tostring()
  local lines = { self.name .. " (" }
  for i, g in ipairs(self.param_groups) do
    lines[#lines + 1] = string.format("Parameter Group %d", i - 1)
    local keys = {}
    for k in pairs(g) do if k ~= "params" then keys[#keys + 1] = k end end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = g[k]
      if type(v) == "table" then v = "(" .. table.concat(v, ", ") .. ")" end
      lines[#lines + 1] = string.format("    %s: %s", k, tostring(v))
    end
  end
  lines[#lines + 1] = ")"
  return table.concat(lines, "\n")
end

---------------------------------------------------------------------------- Adam / AdamW

local Adam = setmetatable({}, { __index = Optimizer })
Adam.__index = Adam
Adam.__tostring = Optimizer.__tostring
M.Adam = Adam

local ADAM_DEFAULTS = { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0, maximize = false,
                        decoupled = false }

function Adam:_check_group(g)
  Optimizer._check_group(self, g)
  local b = g.betas
  if type(b) ~= "table" or type(b[1]) ~= "number" or type(b[2]) ~= "number" or b[1] < 0 or b[1] >= 1
     or b[2] < 0 or b[2] >= 1 then
    fail(self.name, "betas must be {beta1, beta2} in [0, 1), got %s", type(b) == "table" and
      ("{" .. tostring(b[1]) .. ", " .. tostring(b[2]) .. "}") or tostring(b))
  end
  if type(g.eps) ~= "number" or g.eps < 0 then fail(self.name, "invalid eps %s", tostring(g.eps)) end
  if type(g.weight_decay) ~= "number" or g.weight_decay < 0 then
    fail(self.name, "invalid weight_decay %s", tostring(g.weight_decay))
  end
end

--- Adam(params, {lr=1e-3, betas={0.9, 0.999}, eps=1e-8, weight_decay=0 (L2, coupled), maximize=false})
function M.Adam_new(params, opts, name, decoupled, wd_default)
  local defaults = {}
  for k, v in pairs(ADAM_DEFAULTS) do defaults[k] = v end
  defaults.decoupled = decoupled
  if wd_default then defaults.weight_decay = wd_default end
  opts = opts or {}
  if opts.decoupled ~= nil and opts.decoupled ~= decoupled then
    fail(name, "option 'decoupled' is fixed for %s", name)
  end
  return Optimizer.new(Adam, name, params, defaults, opts)
end

--- step(): one Adam/AdamW update of every parameter with a gradient.
-- opts.grad_scale: gradients are divided by it first (a loss scaler's unscale, fused).
function Adam:step(opts)
  local grad_scale = opts and opts.grad_scale or 1
  for _, g in ipairs(self.param_groups) do
    local ps, gs = live(g)
    -- parameters are grouped by their step count (bias correction differs otherwise)
    local by_step, order = {}, {}
    for i, p in ipairs(ps) do
      local s = self.state[p]
      if s == nil then
        s = { step = 0, exp_avg = state_like(p), exp_avg_sq = state_like(p) }
        self.state[p] = s
      end
      s.step = s.step + 1
      local bucket = by_step[s.step]
      if not bucket then
        bucket = { p = {}, g = {}, m = {}, v = {} }
        by_step[s.step] = bucket
        order[#order + 1] = s.step
      end
      local k = #bucket.p + 1
      bucket.p[k], bucket.g[k], bucket.m[k], bucket.v[k] = p, gs[i], s.exp_avg, s.exp_avg_sq
    end
    for _, step in ipairs(order) do
      local b = by_step[step]
      ad._adam_step(b.p, b.g, b.m, b.v, {
        lr = g.lr, beta1 = g.betas[1], beta2 = g.betas[2], eps = g.eps, weight_decay = g.weight_decay,
        step = step, decoupled = g.decoupled, maximize = g.maximize, grad_scale = grad_scale,
      })
    end
  end
end

---------------------------------------------------------------------------- SGD

local SGD = setmetatable({}, { __index = Optimizer })
SGD.__index = SGD
SGD.__tostring = Optimizer.__tostring
M.SGD = SGD

function SGD:_check_group(g)
  Optimizer._check_group(self, g)
  if type(g.momentum) ~= "number" or g.momentum < 0 then fail(self.name, "invalid momentum %s", tostring(g.momentum)) end
  if type(g.weight_decay) ~= "number" or g.weight_decay < 0 then fail(self.name, "invalid weight_decay %s", tostring(g.weight_decay)) end
  if g.nesterov and (g.momentum <= 0 or g.dampening ~= 0) then
    fail(self.name, "nesterov momentum requires a momentum and zero dampening")
  end
end

function M.SGD_new(params, opts)
  return Optimizer.new(SGD, "SGD", params,
    { lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false, maximize = false }, opts)
end

function SGD:step(opts)
  local grad_scale = opts and opts.grad_scale or 1
  for _, g in ipairs(self.param_groups) do
    local ps, gs = live(g)
    if #ps > 0 then
      local attrs = { lr = g.lr, momentum = g.momentum, dampening = g.dampening, weight_decay = g.weight_decay,
                      nesterov = g.nesterov, maximize = g.maximize, grad_scale = grad_scale }
      if g.momentum == 0 then
        ad._sgd_step(ps, gs, nil, attrs)
      else
        -- parameters with and without a buffer yet go in two calls (PyTorch's buf = clone(grad))
        local fresh, fp, fg, old, op, og = {}, {}, {}, {}, {}, {}
        for i, p in ipairs(ps) do
          local s = self.state[p]
          if s == nil or s.momentum_buffer == nil then
            s = s or {}
            s.momentum_buffer = state_like(p)
            self.state[p] = s
            fp[#fp + 1], fg[#fg + 1], fresh[#fresh + 1] = p, gs[i], s.momentum_buffer
          else
            op[#op + 1], og[#og + 1], old[#old + 1] = p, gs[i], s.momentum_buffer
          end
        end
        if #fp > 0 then attrs.first = true; ad._sgd_step(fp, fg, fresh, attrs) end
        if #op > 0 then attrs.first = false; ad._sgd_step(op, og, old, attrs) end
      end
    end
  end
end

---------------------------------------------------------------------------- gradient clipping

--- clip_grad_norm_(params, max_norm, {norm_type=2, error_if_nonfinite=false}) -> total norm
-- (a number, before clipping). Gradients are scaled by max_norm / (norm + 1e-6) when that is
-- below 1, as torch.nn.utils.clip_grad_norm_. params: tensors, a module, or an optimizer.
function M.clip_grad_norm_(params, max_norm, opts)
  opts = opts or {}
  if getmetatable(params) and type(params.param_groups) == "table" then params = params:parameters()
  elseif is_module(params) then params = params:parameters() end
  if ad.is_tensor(params) then params = { params } end
  if type(max_norm) ~= "number" or max_norm < 0 then error("clip_grad_norm_: max_norm must be a number >= 0", 2) end
  local norm_type = opts.norm_type or 2
  if norm_type ~= 2 then error("clip_grad_norm_: only norm_type = 2 is supported", 2) end
  local grads = {}
  for _, p in ipairs(params) do
    local g = p.grad
    if g ~= nil then grads[#grads + 1] = g end
  end
  if #grads == 0 then return 0.0 end
  local total = math.sqrt(ad._foreach_sq_norm(grads):item())
  if opts.error_if_nonfinite and (total ~= total or total == math.huge) then
    error(string.format("clip_grad_norm_: the total norm of the gradients is %s (set error_if_nonfinite=false "
      .. "to clip anyway)", tostring(total)), 2)
  end
  local coef = max_norm / (total + 1e-6)
  if coef < 1 then ad._foreach_scale_(grads, coef) end
  return total
end

--- The global L2 norm of the gradients of params (nil grads skipped), a number.
function M.grad_norm(params)
  if is_module(params) then params = params:parameters() end
  local grads = {}
  for _, p in ipairs(params) do
    local g = p.grad
    if g ~= nil then grads[#grads + 1] = g end
  end
  if #grads == 0 then return 0.0 end
  return math.sqrt(ad._foreach_sq_norm(grads):item())
end

return M
