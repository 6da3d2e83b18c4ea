--- advdiff.nn.pooling: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Upsample.
-- Kernel, stride and padding as PyTorch: a number or {h, w}; stride defaults
-- to the kernel size.
local core = require "advdiff.core"
local Module = require "advdiff.nn.module"

local M = {}

local function check_size(v, cls, what)
  local ok = math.type(v) == "integer" and v >= 0
  if type(v) == "table" then
    ok = #v == 2 and math.type(v[1]) == "integer" and math.type(v[2]) == "integer" and v[1] >= 0 and v[2] >= 0
  end
  if not ok then error(string.format("%s: %s must be a non-negative integer or {h, w}", cls, what), 5) end
  return v
end

local function repr_size(v)
  if type(v) == "table" then return Module.pytuple(v) end
  return tostring(v)
end

-- (k, [stride], [padding], [opts]) -> k, stride, padding, opts
local function pool_args(cls, k, ...)
  local pos, opts = {}, {}
  for i = 1, select("#", ...) do
    local a = select(i, ...)
    if type(a) == "table" and #a == 0 then opts = a
    elseif a ~= nil then pos[#pos + 1] = a end
  end
  local stride = pos[1] or opts.stride or k
  local padding = pos[2] or opts.padding or 0
  return check_size(k, cls, "kernel_size"), check_size(stride, cls, "stride"), check_size(padding, cls, "padding"), opts
end

--- MaxPool2d(kernel_size, [stride], [padding], {dilation=1, ceil_mode=false}).
local MaxPool2d = Module:extend("MaxPool2d")
M.MaxPool2d = MaxPool2d

function MaxPool2d:__init(kernel_size, ...)
  local opts
  self.kernel_size, self.stride, self.padding, opts = pool_args("MaxPool2d", kernel_size, ...)
  self.dilation = opts.dilation or 1
  self.ceil_mode = opts.ceil_mode == true
end

function MaxPool2d:forward(x)
  return (core.max_pool2d(x, self.kernel_size, { stride = self.stride, padding = self.padding,
    dilation = self.dilation, ceil_mode = self.ceil_mode }))
end

function MaxPool2d:extra_repr()
  return string.format("kernel_size=%s, stride=%s, padding=%s, dilation=%s, ceil_mode=%s",
    repr_size(self.kernel_size), repr_size(self.stride), repr_size(self.padding), repr_size(self.dilation),
    Module.pybool(self.ceil_mode))
end

--- AvgPool2d(kernel_size, [stride], [padding], {ceil_mode=false, count_include_pad=true, divisor_override=}).
local AvgPool2d = Module:extend("AvgPool2d")
M.AvgPool2d = AvgPool2d

function AvgPool2d:__init(kernel_size, ...)
  local opts
  self.kernel_size, self.stride, self.padding, opts = pool_args("AvgPool2d", kernel_size, ...)
  self.ceil_mode = opts.ceil_mode == true
  self.count_include_pad = opts.count_include_pad ~= false
  self.divisor_override = opts.divisor_override
end

function AvgPool2d:forward(x)
  return core.avg_pool2d(x, self.kernel_size, { stride = self.stride, padding = self.padding,
    ceil_mode = self.ceil_mode, count_include_pad = self.count_include_pad,
    divisor_override = self.divisor_override })
end

function AvgPool2d:extra_repr()
  local s = string.format("kernel_size=%s, stride=%s, padding=%s", repr_size(self.kernel_size),
    repr_size(self.stride), repr_size(self.padding))
  if self.ceil_mode then s = s .. ", ceil_mode=True" end
  if not self.count_include_pad then s = s .. ", count_include_pad=False" end
  return s
end

--- AdaptiveAvgPool2d(output_size): number or {h, w}.
local AdaptiveAvgPool2d = Module:extend("AdaptiveAvgPool2d")
M.AdaptiveAvgPool2d = AdaptiveAvgPool2d

function AdaptiveAvgPool2d:__init(output_size)
  if math.type(output_size) == "integer" then output_size = { output_size, output_size } end
  if type(output_size) ~= "table" or #output_size ~= 2 or math.type(output_size[1]) ~= "integer"
      or math.type(output_size[2]) ~= "integer" or output_size[1] <= 0 or output_size[2] <= 0 then
    error("AdaptiveAvgPool2d: output_size must be a positive integer or {h, w}", 3)
  end
  self.output_size = { output_size[1], output_size[2] }
end

function AdaptiveAvgPool2d:forward(x) return core.adaptive_avg_pool2d(x, self.output_size) end

function AdaptiveAvgPool2d:extra_repr() return "output_size=" .. Module.pytuple(self.output_size) end

--- Upsample({size=, scale_factor=, mode="nearest"|"bilinear", align_corners=}).
local Upsample = Module:extend("Upsample")
M.Upsample = Upsample

function Upsample:__init(opts)
  opts = opts or {}
  if (opts.size == nil) == (opts.scale_factor == nil) then
    error("Upsample: give exactly one of size and scale_factor", 3)
  end
  local mode = opts.mode or "nearest"
  if mode ~= "nearest" and mode ~= "bilinear" then
    error("Upsample: mode must be 'nearest' or 'bilinear', got '" .. tostring(mode) .. "'", 3)
  end
  if mode == "nearest" and opts.align_corners ~= nil then
    error("Upsample: align_corners only applies to mode 'bilinear'", 3)
  end
  self.size, self.scale_factor, self.mode, self.align_corners = opts.size, opts.scale_factor, mode, opts.align_corners
end

function Upsample:forward(x)
  return core.interpolate(x, { size = self.size, scale_factor = self.scale_factor, mode = self.mode,
    align_corners = self.align_corners })
end

function Upsample:extra_repr()
  local s
  if self.scale_factor ~= nil then
    local sf = self.scale_factor
    if type(sf) == "table" then
      local parts = {}
      for i, v in ipairs(sf) do parts[i] = Module.pyfloat(v) end
      sf = "(" .. table.concat(parts, ", ") .. ")"
    else
      sf = Module.pyfloat(sf)
    end
    s = "scale_factor=" .. sf
  else
    s = "size=" .. repr_size(self.size)
  end
  return s .. ", mode='" .. self.mode .. "'"
end

return M
