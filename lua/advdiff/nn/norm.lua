--- advdiff.nn.norm: GroupNorm, BatchNorm2d, LayerNorm.
local core = require "advdiff.core"
local Module = require "advdiff.nn.module"

local M = {}

local LOW_PRECISION = { f16 = true, bf16 = true }

local function topts(opts) return { dtype = opts and opts.dtype or "f32", device = opts and opts.device } end

--- GroupNorm(num_groups, num_channels, {eps=1e-5, affine=true}).
-- f16/bf16 inputs are normalised in f32 and the result cast back to the input's
-- dtype (guided-diffusion's GroupNorm32), so statistics never lose precision.
local GroupNorm = Module:extend("GroupNorm")
M.GroupNorm = GroupNorm

function GroupNorm:__init(num_groups, num_channels, opts)
  opts = opts or {}
  if math.type(num_groups) ~= "integer" or math.type(num_channels) ~= "integer" or num_groups <= 0
      or num_channels <= 0 or num_channels % num_groups ~= 0 then
    error(string.format("GroupNorm: num_channels (%s) must be a positive multiple of num_groups (%s)",
      tostring(num_channels), tostring(num_groups)), 3)
  end
  self.num_groups, self.num_channels = num_groups, num_channels
  self.eps = opts.eps or 1e-5
  self.affine = opts.affine ~= false
  if self.affine then
    self:register_parameter("weight", core.ones(num_channels, topts(opts)))
    self:register_parameter("bias", core.zeros(num_channels, topts(opts)))
  else
    self:register_parameter("weight", nil)
    self:register_parameter("bias", nil)
  end
end

function GroupNorm:forward(x)
  local dt = x:dtype()
  if LOW_PRECISION[dt] then
    local w, b = self.weight, self.bias
    if w ~= nil and w:dtype() ~= "f32" then w = w:float() end
    if b ~= nil and b:dtype() ~= "f32" then b = b:float() end
    return core.group_norm(x:float(), self.num_groups, w, b, { eps = self.eps }):to(dt)
  end
  return core.group_norm(x, self.num_groups, self.weight, self.bias, { eps = self.eps })
end

function GroupNorm:extra_repr()
  return string.format("%d, %d, eps=%s, affine=%s", self.num_groups, self.num_channels,
    Module.pyfloat(self.eps), Module.pybool(self.affine))
end

--- BatchNorm2d(num_features, {eps=1e-5, momentum=0.1, affine=true, track_running_stats=true}).
-- Training: normalises with the batch statistics (biased variance) and updates
-- running_mean/running_var (unbiased variance) with momentum, and
-- num_batches_tracked (i64, 0-d). Evaluation, or freeze_stats = true (a frozen
-- backbone inside a model that trains): normalises with the running statistics
-- and updates nothing. momentum = false: cumulative moving average.
local BatchNorm2d = Module:extend("BatchNorm2d")
M.BatchNorm2d = BatchNorm2d

function BatchNorm2d:__init(num_features, opts)
  opts = opts or {}
  if math.type(num_features) ~= "integer" or num_features <= 0 then
    error("BatchNorm2d: num_features must be a positive integer, got " .. tostring(num_features), 3)
  end
  self.num_features = num_features
  self.eps = opts.eps or 1e-5
  if opts.momentum == nil then self.momentum = 0.1 else self.momentum = opts.momentum end
  self.affine = opts.affine ~= false
  self.track_running_stats = opts.track_running_stats ~= false
  self.freeze_stats = false
  if self.affine then
    self:register_parameter("weight", core.ones(num_features, topts(opts)))
    self:register_parameter("bias", core.zeros(num_features, topts(opts)))
  else
    self:register_parameter("weight", nil)
    self:register_parameter("bias", nil)
  end
  if self.track_running_stats then
    self:register_buffer("running_mean", core.zeros(num_features, topts(opts)))
    self:register_buffer("running_var", core.ones(num_features, topts(opts)))
    self:register_buffer("num_batches_tracked", core.tensor(0, { dtype = "i64", device = opts.device }))
  else
    self:register_buffer("running_mean", nil)
    self:register_buffer("running_var", nil)
    self:register_buffer("num_batches_tracked", nil)
  end
end

function BatchNorm2d:reset_running_stats()
  if self.running_mean == nil then return end
  core.no_grad(function()
    self.running_mean:zero_()
    self.running_var:fill_(1)
    self.num_batches_tracked:zero_()
  end)
end

function BatchNorm2d:forward(x)
  if x:dim() ~= 4 then
    error(string.format("BatchNorm2d: expected 4-D input (N, C, H, W), got %d-D", x:dim()), 2)
  end
  local training = self.training and not self.freeze_stats
  local rm, rv = self.running_mean, self.running_var
  local factor = 0.0
  if training and rm ~= nil then
    local nbt = self.num_batches_tracked
    if nbt ~= nil then core.no_grad(function() nbt:copy_(nbt + 1) end) end
    if self.momentum == false then
      factor = 1.0 / nbt:item()
    else
      factor = self.momentum
    end
  end
  -- batch statistics when training, or when there are no running statistics to use
  local use_batch = training or rm == nil
  return core.batch_norm(x, rm, rv, self.weight, self.bias,
    { training = use_batch, momentum = factor, eps = self.eps })
end

function BatchNorm2d:extra_repr()
  local mom = self.momentum == false and "None" or Module.pyfloat(self.momentum)
  return string.format("%d, eps=%s, momentum=%s, affine=%s, track_running_stats=%s", self.num_features,
    Module.pyfloat(self.eps), mom, Module.pybool(self.affine), Module.pybool(self.track_running_stats))
end

--- LayerNorm(normalized_shape, {eps=1e-5, elementwise_affine=true, bias=true}):
-- normalises over the last #normalized_shape dims.
local LayerNorm = Module:extend("LayerNorm")
M.LayerNorm = LayerNorm

function LayerNorm:__init(normalized_shape, opts)
  opts = opts or {}
  if math.type(normalized_shape) == "integer" then normalized_shape = { normalized_shape } end
  if type(normalized_shape) ~= "table" or #normalized_shape == 0 then
    error("LayerNorm: normalized_shape must be an integer or a table of integers", 3)
  end
  local shape = {}
  for i, v in ipairs(normalized_shape) do
    if math.type(v) ~= "integer" or v <= 0 then
      error("LayerNorm: normalized_shape must hold positive integers", 3)
    end
    shape[i] = v
  end
  self.normalized_shape = shape
  self.eps = opts.eps or 1e-5
  self.elementwise_affine = opts.elementwise_affine ~= false
  if self.elementwise_affine then
    self:register_parameter("weight", core.ones(shape, topts(opts)))
    if opts.bias ~= false then
      self:register_parameter("bias", core.zeros(shape, topts(opts)))
    else
      self:register_parameter("bias", nil)
    end
  else
    self:register_parameter("weight", nil)
    self:register_parameter("bias", nil)
  end
end

function LayerNorm:forward(x)
  return core.layer_norm(x, self.normalized_shape, self.weight, self.bias, { eps = self.eps })
end

function LayerNorm:extra_repr()
  return string.format("%s, eps=%s, elementwise_affine=%s", Module.pytuple(self.normalized_shape),
    Module.pyfloat(self.eps), Module.pybool(self.elementwise_affine))
end

return M
