--- advdiff.nn.conv: Conv2d and Conv1d (zero padding, groups, dilation).
-- Conv2d(in, out, k, [stride], [padding], {stride=, padding=, dilation=, groups=, bias=})
-- padding: a number, {h, w}, or "same"/"valid" (as PyTorch; "same" needs stride 1)
local core = require "advdiff.core"
local Module = require "advdiff.nn.module"
local init = require "advdiff.nn.initializers"

local M = {}

-- number or {a, b, ...} -> list of n integers
local function ntuple(v, n, cls, what)
  local out = {}
  if math.type(v) == "integer" then
    for i = 1, n do out[i] = v end
  elseif type(v) == "table" and #v == n then
    for i = 1, n do
      if math.type(v[i]) ~= "integer" then v = nil; break end
      out[i] = v[i]
    end
  else
    v = nil
  end
  if v == nil then
    error(string.format("%s: %s must be an integer or a table of %d integers", cls, what, n), 5)
  end
  return out
end

local function all_eq(t, x)
  for _, v in ipairs(t) do if v ~= x then return false end end
  return true
end

-- After kernel_size: optional positional stride and padding (numbers or
-- lists, as PyTorch's positional arguments), then an optional options table.
local function split_args(cls, ...)
  local pos, opts = {}, nil
  for i = 1, select("#", ...) do
    local a = select(i, ...)
    if type(a) == "table" and #a == 0 then
      if i ~= select("#", ...) then error(cls .. ": the options table must be the last argument", 5) end
      opts = a
    elseif a ~= nil then
      pos[#pos + 1] = a
    end
  end
  if #pos > 2 then error(cls .. ": expected at most stride and padding before the options table", 5) end
  return pos[1], pos[2], opts or {}
end

local function conv_init(self, cls, nd, in_channels, out_channels, kernel_size, ...)
  local stride, padding, opts = split_args(cls, ...)
  for _, what in ipairs { "in_channels", "out_channels" } do
    local v = what == "in_channels" and in_channels or out_channels
    if math.type(v) ~= "integer" or v <= 0 then
      error(string.format("%s: %s must be a positive integer, got %s", cls, what, tostring(v)), 4)
    end
  end
  local groups = opts.groups or 1
  if math.type(groups) ~= "integer" or groups <= 0 or in_channels % groups ~= 0 or out_channels % groups ~= 0 then
    error(string.format("%s: groups (%s) must divide in_channels (%d) and out_channels (%d)", cls,
      tostring(groups), in_channels, out_channels), 4)
  end
  self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
  self.kernel_size = ntuple(kernel_size, nd, cls, "kernel_size")
  self.stride = ntuple(stride or opts.stride or 1, nd, cls, "stride")
  padding = padding or opts.padding or 0
  if padding == "same" or padding == "valid" then
    self.padding = padding   -- resolved by the op ("same" needs stride 1)
  else
    self.padding = ntuple(padding, nd, cls, "padding")
  end
  self.dilation = ntuple(opts.dilation or 1, nd, cls, "dilation")
  local wshape = { out_channels, in_channels // groups }
  for i = 1, nd do wshape[#wshape + 1] = self.kernel_size[i] end
  local topts = { dtype = opts.dtype or "f32", device = opts.device }
  self:register_parameter("weight", core.empty(wshape, topts))
  if opts.bias ~= false then
    self:register_parameter("bias", core.empty(out_channels, topts))
  else
    self:register_parameter("bias", nil)
  end
  self:reset_parameters()
end

local function conv_repr(self)
  local s = string.format("%d, %d, kernel_size=%s, stride=%s", self.in_channels, self.out_channels,
    Module.pytuple(self.kernel_size), Module.pytuple(self.stride))
  if type(self.padding) == "string" then
    s = s .. ", padding=" .. self.padding
  elseif not all_eq(self.padding, 0) then
    s = s .. ", padding=" .. Module.pytuple(self.padding)
  end
  if not all_eq(self.dilation, 1) then s = s .. ", dilation=" .. Module.pytuple(self.dilation) end
  if self.groups ~= 1 then s = s .. ", groups=" .. self.groups end
  if self.bias == nil then s = s .. ", bias=False" end
  return s
end

local Conv2d = Module:extend("Conv2d")
M.Conv2d = Conv2d

function Conv2d:__init(in_channels, out_channels, kernel_size, ...)
  conv_init(self, "Conv2d", 2, in_channels, out_channels, kernel_size, ...)
end
function Conv2d:reset_parameters() init.default_linear_(self.weight, self.bias) end
function Conv2d:forward(x)
  return core.conv2d(x, self.weight, self.bias,
    { stride = self.stride, padding = self.padding, dilation = self.dilation, groups = self.groups })
end
Conv2d.extra_repr = conv_repr

local Conv1d = Module:extend("Conv1d")
M.Conv1d = Conv1d

function Conv1d:__init(in_channels, out_channels, kernel_size, ...)
  conv_init(self, "Conv1d", 1, in_channels, out_channels, kernel_size, ...)
end
function Conv1d:reset_parameters() init.default_linear_(self.weight, self.bias) end
function Conv1d:forward(x)
  return core.conv1d(x, self.weight, self.bias,
    { stride = self.stride[1], padding = type(self.padding) == "string" and self.padding or self.padding[1],
      dilation = self.dilation[1], groups = self.groups })
end
Conv1d.extra_repr = conv_repr

return M
