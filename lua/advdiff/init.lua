--- advdiff: tensors, autograd and the diffusion/GAN workbench built on them.
-- `local ad = require "advdiff"` gives the core's tensors and ops (from the C
-- module advdiff.core) plus the Lua libraries, loaded on first use:
-- ad.nn, ad.optim, ad.models, ad.diffusion, ad.data, ad.train, ad.metrics,
-- ad.sweep, ad.log, ad.testing, ad.config.
local core = require "advdiff.core"

local ad = {}
for k, v in pairs(core) do ad[k] = v end
ad.version = core.__version

--- Autograd functions written in Lua.
-- local Square = ad.Function{
--   name = "square",
--   forward = function(ctx, x) ctx:save_for_backward(x); return x * x end,
--   backward = function(ctx, g) local x = ctx.saved_tensors[1]; return g * x * 2 end,
-- }
-- local y = Square(x)
-- forward runs without grad recording; backward gets one gradient per output
-- and returns one gradient (or nil) per forward argument. Tensors needed in
-- backward go through ctx:save_for_backward(...), which keeps detached
-- aliases: an output stored on ctx directly would keep its own graph alive.
local Ctx = {}
Ctx.__index = Ctx
function Ctx:save_for_backward(...)
  local saved = table.pack(...)
  for i = 1, saved.n do
    local t = saved[i]
    if core.is_tensor(t) then saved[i] = t:detach() end
  end
  self.saved_tensors = saved
end

local Function = {}
Function.__index = Function
Function.__call = function(self, ...) return self:apply(...) end
function Function:apply(...)
  local fwd, bwd = self.forward, self.backward
  local function forward(ctx, ...)
    setmetatable(ctx, Ctx)
    return fwd(ctx, ...)
  end
  return core._function_apply(self.name, forward, bwd, ...)
end

function ad.Function(def)
  assert(type(def) == "table", "Function: expected {forward=function, backward=function}")
  assert(type(def.forward) == "function", "Function: 'forward' must be a function")
  assert(type(def.backward) == "function", "Function: 'backward' must be a function")
  return setmetatable({ name = def.name or "lua_function", forward = def.forward, backward = def.backward }, Function)
end

--- Gradient checkpointing: fn's activations are not kept; its forward runs
-- again during backward. Gradients equal those of calling fn directly: the
-- default generator's position is restored for the recomputation, so dropout
-- draws the same mask.
local function is_tensor(x) return core.is_tensor(x) end
local Checkpoint = ad.Function{
  name = "checkpoint",
  forward = function(ctx, fn, ...)
    ctx.fn = fn
    ctx.rng = core.get_rng_state()
    local args = table.pack(...)
    for i = 1, args.n do
      if is_tensor(args[i]) then
        args[i] = { tensor = args[i]:detach(), requires_grad = args[i].requires_grad }
      end
    end
    ctx.args = args
    local outs = table.pack(fn(...))
    ctx.n_out = outs.n
    return table.unpack(outs, 1, outs.n)
  end,
  backward = function(ctx, ...)
    local grads = table.pack(...)
    local args = ctx.args
    local inputs = {}
    for i = 1, args.n do
      local a = args[i]
      if type(a) == "table" and a.tensor then
        local x = a.tensor:detach()
        if a.requires_grad then x.requires_grad = true end
        inputs[i] = x
      else
        inputs[i] = a
      end
    end
    local now = core.get_rng_state()
    core.set_rng_state(ctx.rng)
    local outs = table.pack(core.enable_grad(ctx.fn, table.unpack(inputs, 1, args.n)))
    core.set_rng_state(now)
    local roots, rgrads = {}, {}
    for i = 1, outs.n do
      local o = outs[i]
      if is_tensor(o) and o.requires_grad and grads[i] then
        roots[#roots + 1] = o
        rgrads[#rgrads + 1] = grads[i]
      end
    end
    if #roots > 0 then core.backward(roots, rgrads) end
    local res = { nil }                 -- no gradient for fn itself
    for i = 1, args.n do
      local x = inputs[i]
      res[i + 1] = (is_tensor(x) and x.requires_grad) and x.grad or nil
    end
    return table.unpack(res, 1, args.n + 1)
  end,
}

function ad.checkpoint(fn, ...)
  if not core.is_grad_enabled() then return fn(...) end
  return Checkpoint(fn, ...)
end

-- ad.log is both PyTorch's elementwise log (ad.log(x)) and the logging
-- library (ad.log.Logger, ...): a callable table that loads the library on
-- first field access.
local loglib
ad.log = setmetatable({}, {
  __call = function(_, ...) return core.log(...) end,
  __index = function(t, k)
    loglib = loglib or require "advdiff.log"
    return loglib[k]
  end,
})

-- Lua libraries, loaded when first used
local lazy = {
  nn = "advdiff.nn", optim = "advdiff.optim", models = "advdiff.models", diffusion = "advdiff.diffusion",
  data = "advdiff.data", train = "advdiff.train", metrics = "advdiff.metrics", sweep = "advdiff.sweep",
  testing = "advdiff.testing", config = "advdiff.config", image = "advdiff.image",
  cuda = "advdiff.cuda", amp = "advdiff.amp",
}
setmetatable(ad, {
  __index = function(t, k)
    local name = lazy[k]
    if not name then return nil end
    local mod = require(name)
    rawset(t, k, mod)
    return mod
  end,
})

return ad
