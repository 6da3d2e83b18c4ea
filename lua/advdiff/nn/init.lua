--- advdiff.nn: modules (layers with parameters) built on the core's ops.
--
-- API summary (stable; models such as advdiff.models.adm are written against it)
-- ==========================================================================
--
-- Defining a module
--   local nn = require "advdiff.nn"          (also ad.nn)
--   local Block = nn.Module:extend("Block")  -- class; Block(...) calls Block:__init(...)
--   (extend(name, fields) also takes a table of class fields; Block.super is the parent class)
--   function Block:__init(ch)
--     -- (registries and training=true are set up before __init runs; calling
--     --  nn.Module.__init(self) or Parent.__init(self, ...) first is fine and harmless)
--     self.norm = nn.GroupNorm(32, ch)        -- assigning a module registers it as a child "norm"
--     self.conv = nn.Conv2d(ch, ch, 3, {padding = 1})
--     self:register_parameter("scale", ad.ones(ch))          -- requires_grad set to true
--     self:register_buffer("count", ad.zeros(1))             -- in state_dict, no grad
--     self:register_buffer("tmp", t, {persistent = false})   -- moved by to(), not in state_dict
--   end
--   function Block:forward(x) return self.conv(ad.silu(self.norm(x))) end
--   Modules cache no outputs and write no backward code: forward only calls ops.
--   Registered things are plain fields: self.weight, self.conv, ... Reassigning a registered
--   name (self.fc = nn.Identity(), self.weight = t) replaces it; assigning nil removes it from
--   parameters()/state_dict() (PyTorch's "= None"). Child names are PyTorch's names, so
--   checkpoints load: add_module(name, m) for names that are not Lua identifiers.
--   A class may define extra_repr() (one line) for printing.
--
-- Using modules (m is any module)
--   m(x, ...) == m:forward(x, ...)
--   m:parameters([trainable_only]) -> list of tensors: registration order, own params first,
--       then children depth-first (PyTorch's order); a shared tensor appears once
--   m:named_parameters()   -> iterator: for name, p in m:named_parameters() do ... end
--                             names like "layer1.0.conv1.weight"; same order as parameters()
--   m:buffers(), m:named_buffers()  (same conventions; persistent and non-persistent)
--   m:children(), m:named_children(), m:modules(), m:named_modules()  (iterators for named_*;
--       modules() is a list, self first, depth-first pre-order; named_modules gives "" for self)
--   m:state_dict() -> sd, keys: sd maps name -> tensor (detached, shares storage),
--       keys is the ordered list of names (PyTorch's order: params, buffers, then children).
--       BatchNorm's num_batches_tracked is an i64 0-d tensor.
--   m:load_state_dict(sd, {strict = true}) -> missing, unexpected (lists of names)
--       copies into the existing tensors (dtype converted, e.g. f16 checkpoint -> f32 params);
--       strict: missing or unexpected keys raise an error listing them; non-strict returns them.
--       A shape mismatch is always an error naming the key and both shapes. A missing
--       "*.num_batches_tracked" is tolerated (checkpoints from before that buffer existed).
--   m:train([mode=true]), m:eval()  (recursive; sets m.training); returns m
--   m:to(dtype_or_device) e.g. m:to("f64"), m:to("cuda"), m:to("cpu"), m:to{dtype=, device=}:
--       replaces parameter and buffer tensors that need converting by converted ones (dtype:
--       floating-point tensors only; requires_grad kept); tensors already right are kept as they
--       are. Returns m. Take parameters() again after a converting to() (as with PyTorch
--       optimizers). m:float(), m:double(), m:half(), m:cuda(), m:cpu() are shorthands.
--   m:freeze([pattern]), m:unfreeze([pattern]): set requires_grad on parameters whose name
--       matches the Lua pattern (string.find; nil = all); return m
--   m:num_parameters([trainable_only]) -> integer
--   m:zero_grad()   sets p.grad = nil for every parameter
--   m:apply(fn)     fn(module) on every submodule (children first, then m); returns m
--   m:add_module(name, child), m:register_parameter(name, t_or_nil) (a non-leaf is detached; the
--       parameter gets requires_grad=true), m:register_buffer(name, t, opts)
--   tostring(m)     PyTorch-style tree: "Linear(in_features=4, out_features=2, bias=True)"
--   nn.is_module(v)
--
-- Layers (constructor arguments follow PyTorch; keyword args in a trailing table)
--   nn.Linear(in, out, {bias=true})
--   nn.Conv2d(in, out, k, [stride], [padding], {stride=1, padding=0, dilation=1, groups=1, bias=true})
--       k/stride/padding/dilation: number or {h, w}; padding also "same" or "valid"
--   nn.Conv1d(in, out, k, [stride], [padding], {stride, padding, dilation, groups, bias})
--   nn.GroupNorm(num_groups, num_channels, {eps=1e-5, affine=true})
--       f16/bf16 inputs are normalised in f32 and cast back (ADM's GroupNorm32)
--   nn.BatchNorm2d(C, {eps=1e-5, momentum=0.1, affine=true, track_running_stats=true})
--       train: batch statistics, updates running stats and num_batches_tracked;
--       eval, or bn.freeze_stats = true: running statistics. momentum=false: cumulative average.
--   nn.LayerNorm(normalized_shape, {eps=1e-5, elementwise_affine=true, bias=true})
--   nn.Embedding(num_embeddings, dim)   forward(indices): i64 indices, 0-based (as PyTorch)
--   nn.Dropout(p=0.5)                   active only while m.training
--   nn.SiLU(), nn.ReLU(), nn.GELU() (exact erf form only), nn.Tanh(), nn.Sigmoid(), nn.Identity()
--   nn.Flatten(start_dim=2, end_dim=-1)   (1-based dims: PyTorch's Flatten(1, -1))
--   nn.Upsample({size=, scale_factor=, mode="nearest"|"bilinear", align_corners=})
--   nn.AvgPool2d(k, [stride], [padding], {ceil_mode=false, count_include_pad=true, divisor_override=})
--   nn.MaxPool2d(k, [stride], [padding], {dilation=1, ceil_mode=false})
--   nn.AdaptiveAvgPool2d(output_size)    number or {h, w}
--
-- Containers
--   nn.Sequential(m1, m2, ...) or nn.Sequential{m1, m2, ...}: children named "0", "1", ...
--       (state_dict keys "0.weight"); seq[i] is the i-th child (1-based, seq[1] is "0");
--       #seq; seq:append(m); seq[i] = m replaces a child; forward(x) chains them (one input)
--   nn.ModuleList{m1, m2, ...}: same naming and indexing, no forward; ml:append(m);
--       for i, m in ipairs(ml) do ... end (ipairs honours __index)
--   Containers can be subclassed like any module, e.g. ADM's TimestepEmbedSequential:
--       local TES = nn.Sequential:extend("TimestepEmbedSequential")
--       function TES:forward(x, emb) for _, layer in ipairs(self) do ... end return x end
--   nn.ModuleDict{{"name", m}, ...} or nn.ModuleDict{name = m, ...} (keys then sorted);
--       md.name / md:get(name); md:add(name, m); md:keys()
--
-- Initialisers: nn.init (all in place, no grad, default generator unless opts.generator)
--   kaiming_uniform_(t, {a=0, mode="fan_in", nonlinearity="leaky_relu"}), kaiming_normal_(...),
--   xavier_uniform_(t, {gain=1}), xavier_normal_(t, {gain=1}), uniform_(t, a, b),
--   normal_(t, mean, std), zeros_(t), ones_(t), constant_(t, v), calculate_gain(name, param),
--   fan_in_and_fan_out(t), default_linear_(weight, bias) (PyTorch's Linear/Conv reset_parameters)
--   Defaults as PyTorch: Linear/Conv weights kaiming_uniform_(a=sqrt(5)), biases
--   U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norm weights 1, biases 0; Embedding N(0, 1).
local nn = {}

local Module = require "advdiff.nn.module"
nn.Module = Module
nn.is_module = Module.is_module
nn.init = require "advdiff.nn.initializers"

for _, file in ipairs { "advdiff.nn.container", "advdiff.nn.linear", "advdiff.nn.conv", "advdiff.nn.norm",
                        "advdiff.nn.activation", "advdiff.nn.pooling" } do
  for name, cls in pairs(require(file)) do nn[name] = cls end
end

return nn
