--- advdiff.nn.activation: parameter-free elementwise modules.
local core = require "advdiff.core"
local Module = require "advdiff.nn.module"

local M = {}

local function simple(name, fn)
  local cls = Module:extend(name)
  cls.forward = function(_, x) return fn(x) end
  M[name] = cls
  return cls
end

simple("ReLU", function(x) return core.relu(x) end)
simple("SiLU", function(x) return core.silu(x) end)
simple("Tanh", function(x) return core.tanh(x) end)
simple("Sigmoid", function(x) return core.sigmoid(x) end)

--- GELU(): the exact (erf) form. ad.gelu has no tanh approximation, so
-- GELU{approximate="tanh"} is refused rather than silently computed exactly.
local GELU = Module:extend("GELU")
M.GELU = GELU

function GELU:__init(opts)
  local approximate = type(opts) == "table" and opts.approximate or opts or "none"
  if approximate ~= "none" then
    error("GELU: only approximate='none' is supported, got '" .. tostring(approximate) .. "'", 3)
  end
  self.approximate = approximate
end

function GELU:forward(x) return core.gelu(x) end

return M
