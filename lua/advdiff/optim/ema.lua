--- advdiff.optim.ema: an exponential moving average of a model's parameters
-- (guided-diffusion's ema_rate, 0.9999 by default), updated by one fused core
-- op (ad._ema_update) over every parameter.
--
--   local ema = ad.optim.EMA(model, {decay = 0.9999, warmup = false})
--   ... opt:step(); ema:update()
--   ema:swap(model)   -- the model now holds the averaged weights (swap again to go back)
--   ema:copy_to(model), ema:state_dict() (model's parameter names -> tensors, as a model
--   state dict, plus num_updates), ema:load_state_dict(sd)
-- warmup = true uses decay_t = min(decay, (1 + t) / (10 + t)) so early averages are not
-- dominated by the initial weights. Only parameters are averaged (buffers are the model's).
local ad = require "advdiff"

local EMA = {}
EMA.__index = EMA

local function is_module(v) return type(v) == "table" and type(v.named_parameters) == "function" end

local function new(model, opts)
  opts = opts or {}
  local self = setmetatable({ decay = opts.decay or 0.9999, warmup = opts.warmup or false, num_updates = 0,
                              names = {}, params = {}, shadow = {} }, EMA)
  if type(self.decay) ~= "number" or self.decay < 0 or self.decay > 1 then
    error("EMA: decay must be in [0, 1], got " .. tostring(self.decay), 3)
  end
  if is_module(model) then
    for name, p in model:named_parameters() do
      self.names[#self.names + 1] = name
      self.params[#self.params + 1] = p
    end
  elseif type(model) == "table" then
    for i, p in ipairs(model) do
      if not ad.is_tensor(p) then error("EMA: params[" .. i .. "] is not a tensor", 3) end
      self.names[i] = tostring(i)
      self.params[i] = p
    end
  else
    error("EMA: expected a module or a list of parameters", 3)
  end
  ad.no_grad(function()
    for i, p in ipairs(self.params) do self.shadow[i] = p:detach():clone() end
  end)
  return self
end

setmetatable(EMA, { __call = function(_, model, opts) return new(model, opts) end })

--- The decay in force for the next update.
function EMA:current_decay()
  if self.warmup then
    local t = self.num_updates
    return math.min(self.decay, (1 + t) / (10 + t))
  end
  return self.decay
end

--- shadow <- d * shadow + (1 - d) * params. decay overrides self.decay for this call.
function EMA:update(decay)
  local d = decay or self:current_decay()
  ad._ema_update(self.shadow, self.params, d)
  self.num_updates = self.num_updates + 1
end

--- Copy the averaged weights into the model's parameters (or params list).
function EMA:copy_to(target)
  local dst = self.params
  if target ~= nil then dst = is_module(target) and target:parameters() or target end
  if #dst ~= #self.shadow then error(string.format("EMA.copy_to: %d parameters, the EMA has %d", #dst, #self.shadow), 2) end
  ad.no_grad(function() for i, p in ipairs(dst) do p:copy_(self.shadow[i]) end end)
end

--- Exchange the model's weights and the averaged ones (call again to restore).
function EMA:swap()
  ad.no_grad(function()
    for i, p in ipairs(self.params) do
      local tmp = p:detach():clone()
      p:copy_(self.shadow[i])
      self.shadow[i]:copy_(tmp)
    end
  end)
  self.swapped = not self.swapped
end

--- {num_updates=, decay=, shadow = {name -> tensor}} (the shadow is a model state dict).
function EMA:state_dict()
  local sd = {}
  for i, name in ipairs(self.names) do sd[name] = self.shadow[i]:detach() end
  return { num_updates = self.num_updates, decay = self.decay, shadow = sd }
end

function EMA:load_state_dict(sd)
  if type(sd) ~= "table" or type(sd.shadow) ~= "table" then error("EMA.load_state_dict: expected {shadow=...}", 2) end
  for i, name in ipairs(self.names) do
    local t = sd.shadow[name]
    if t == nil then error("EMA.load_state_dict: missing '" .. name .. "'", 2) end
    ad.no_grad(function() self.shadow[i]:copy_(t) end)
  end
  self.num_updates = sd.num_updates or self.num_updates
  if sd.decay then self.decay = sd.decay end
end

return EMA
