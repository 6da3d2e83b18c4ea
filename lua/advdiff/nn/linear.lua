--- advdiff.nn.linear: Linear, Embedding, Dropout, Identity, Flatten.
local core = require "advdiff.core"
local Module = require "advdiff.nn.module"
local init = require "advdiff.nn.initializers"

local M = {}

local function check_pos_int(v, cls, what)
  if math.type(v) ~= "integer" or v <= 0 then
    error(string.format("%s: %s must be a positive integer, got %s", cls, what, tostring(v)), 4)
  end
end

local function opt_dtype(opts) return { dtype = opts and opts.dtype or "f32", device = opts and opts.device } end

--- Linear(in_features, out_features, {bias=true, dtype=, device=}): y = x W^T + b.
local Linear = Module:extend("Linear")
M.Linear = Linear

function Linear:__init(in_features, out_features, opts)
  check_pos_int(in_features, "Linear", "in_features")
  check_pos_int(out_features, "Linear", "out_features")
  opts = opts or {}
  self.in_features, self.out_features = in_features, out_features
  self:register_parameter("weight", core.empty(out_features, in_features, opt_dtype(opts)))
  if opts.bias ~= false then
    self:register_parameter("bias", core.empty(out_features, opt_dtype(opts)))
  else
    self:register_parameter("bias", nil)
  end
  self:reset_parameters()
end

function Linear:reset_parameters() init.default_linear_(self.weight, self.bias) end

function Linear:forward(x) return core.linear(x, self.weight, self.bias) end

function Linear:extra_repr()
  return string.format("in_features=%d, out_features=%d, bias=%s", self.in_features, self.out_features,
    Module.pybool(self.bias ~= nil))
end

--- Embedding(num_embeddings, embedding_dim): forward(indices) looks up rows
-- (0-based i64 indices, as F.embedding). Weight initialised N(0, 1).
local Embedding = Module:extend("Embedding")
M.Embedding = Embedding

function Embedding:__init(num_embeddings, embedding_dim, opts)
  check_pos_int(num_embeddings, "Embedding", "num_embeddings")
  check_pos_int(embedding_dim, "Embedding", "embedding_dim")
  self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
  self:register_parameter("weight", core.empty(num_embeddings, embedding_dim, opt_dtype(opts)))
  self:reset_parameters()
end

function Embedding:reset_parameters() init.normal_(self.weight, 0, 1) end

function Embedding:forward(indices) return core.embedding(indices, self.weight) end

function Embedding:extra_repr() return string.format("%d, %d", self.num_embeddings, self.embedding_dim) end

--- Dropout(p=0.5): zeroes elements with probability p while training, scales by 1/(1-p).
local Dropout = Module:extend("Dropout")
M.Dropout = Dropout

function Dropout:__init(p)
  p = p or 0.5
  if type(p) ~= "number" or p < 0 or p > 1 then
    error("Dropout: p must be a probability in [0, 1], got " .. tostring(p), 3)
  end
  self.p = p
end

function Dropout:forward(x)
  if not self.training or self.p == 0 then return x end
  return core.dropout(x, { p = self.p, training = true })
end

function Dropout:extra_repr() return "p=" .. Module.pyfloat(self.p) .. ", inplace=False" end

--- Identity(): returns its input.
local Identity = Module:extend("Identity")
M.Identity = Identity
function Identity:forward(x) return x end

--- Flatten(start_dim=2, end_dim=-1): 1-based dims, so the default keeps the batch dim
-- (PyTorch's Flatten(1, -1)).
local Flatten = Module:extend("Flatten")
M.Flatten = Flatten

function Flatten:__init(start_dim, end_dim)
  self.start_dim, self.end_dim = start_dim or 2, end_dim or -1
end

function Flatten:forward(x) return x:flatten(self.start_dim, self.end_dim) end

function Flatten:extra_repr() return string.format("start_dim=%d, end_dim=%d", self.start_dim, self.end_dim) end

return M
