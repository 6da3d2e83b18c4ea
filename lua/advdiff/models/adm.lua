--- advdiff.models.adm: OpenAI's ADM U-Net (guided-diffusion's unet.py
-- UNetModel), built from create_model's options, with guided-diffusion's
-- state_dict names and shapes so its checkpoints load as they are.
--
--   local adm = require "advdiff.models.adm"          (also ad.models.adm)
--   local model = adm.UNetModel(adm.config("imagenet64"))
--   model:load_state_dict(ad.load("64x64_diffusion.pt"))
--   local out = model:forward(x, t, y)                 -- (N, 6, 64, 64): eps and variance values
--   local model = adm.from_checkpoint("64x64_diffusion.pt", "imagenet64")
--
-- UNetModel(opts) options (create_model's names and defaults):
--   image_size (64), num_channels (128), num_res_blocks (2), channel_mult
--   ("": by image size, or "1,2,2" or {1, 2, 2}), attention_resolutions ("16,8":
--   resolutions, turned into downsample rates image_size // res), num_heads (1),
--   num_head_channels (-1), num_heads_upsample (-1: num_heads),
--   use_scale_shift_norm (false), resblock_updown (false),
--   use_new_attention_order (false), learn_sigma (false: 3 output channels, true:
--   6), class_cond (false), dropout (0), use_fp16 (false), use_checkpoint (false).
--   Also UNetModel's own: in_channels (3), out_channels, num_classes (1000 with
--   class_cond), conv_resample (true), attention_ds (downsample rates given
--   directly). The diffusion options of create_model_and_diffusion
--   (diffusion_steps, noise_schedule, ...) are accepted and ignored, so one
--   config table serves both UNetModel and ad.diffusion.create.
--
-- forward(x, t, y): x (N, C, H, W); t (N) timesteps (i64 or float: rescaled
-- timesteps may be fractional); y (N) i64 class labels (0-based), required iff
-- class_cond. y may also be a model_kwargs table {y = labels}.
--
-- use_checkpoint recomputes every ResBlock and AttentionBlock in backward
-- (ad.checkpoint): the gradients are unchanged, the activations are not kept.
-- use_fp16 converts the convolutions of the torso (input_blocks, middle_block,
-- output_blocks) to f16 and runs the torso in f16 like convert_to_fp16; the
-- time embedding, GroupNorm statistics, the attention softmax and the output
-- head stay f32. On the CPU backend f16 convolutions are computed through f32,
-- so use_fp16 saves memory there but not time.
local ad = require "advdiff"
local nn = require "advdiff.nn"

local M = {}

local function shape_str(s) return "[" .. table.concat(s, ", ") .. "]" end

------------------------------------------------------------------------------
-- building blocks

--- Sinusoidal timestep embedding (guided_diffusion.nn.timestep_embedding):
-- [cos(t f), sin(t f)], f_i = exp(-ln(max_period) i / half), computed in f32.
function M.timestep_embedding(timesteps, dim, max_period)
  max_period = max_period or 10000
  if not ad.is_tensor(timesteps) or timesteps:dim() ~= 1 then
    error("timestep_embedding: timesteps must be a 1-D tensor, got " ..
      (ad.is_tensor(timesteps) and shape_str(timesteps:shape()) or type(timesteps)), 2)
  end
  local half = dim // 2
  local dev = timesteps:device()
  local freqs = (ad.arange(0, half, { dtype = "f32", device = dev ~= "cpu" and dev or nil }) * (-math.log(max_period)) / half):exp()
  local args = timesteps:float():view(-1, 1) * freqs:view(1, -1)
  local emb = ad.cat({ args:cos(), args:sin() }, -1)
  if dim % 2 == 1 then emb = ad.cat({ emb, ad.zeros_like(emb:narrow(2, 1, 1)) }, -1) end
  return emb
end

-- L: the layer factory (nn, or SHAPES below, which lists parameter shapes
-- without allocating them)
local function normalization(L, channels) return L.GroupNorm(32, channels) end

local function zero_module(m)
  ad.no_grad(function()
    for _, p in ipairs(m:parameters()) do p:zero_() end
  end)
  return m
end

-- a class whose forward takes the timestep embedding as a second argument
local function timestep_block(name) return nn.Module:extend(name, { _timestep_block = true }) end

--- Sequential that passes the embedding to the children that take it.
local TimestepEmbedSequential = nn.Sequential:extend("TimestepEmbedSequential", { _timestep_block = true })
M.TimestepEmbedSequential = TimestepEmbedSequential
function TimestepEmbedSequential:forward(x, emb)
  for _, name in ipairs(self._module_names) do
    local m = rawget(self, name)
    if m ~= nil then
      if m._timestep_block then x = m(x, emb) else x = m(x) end
    end
  end
  return x
end

--- Nearest 2x upsampling, then a 3x3 conv when use_conv.
local Upsample = nn.Module:extend("Upsample")
M.Upsample = Upsample
function Upsample:__init(channels, use_conv, out_channels, L)
  nn.Module.__init(self)
  L = L or nn
  self.channels, self.out_channels, self.use_conv = channels, out_channels or channels, use_conv
  if use_conv then self.conv = L.Conv2d(channels, self.out_channels, 3, { padding = 1 }) end
end
function Upsample:forward(x)
  local s = x:shape()
  if s[2] ~= self.channels then
    error(string.format("Upsample: expected %d channels, got %d", self.channels, s[2]), 2)
  end
  x = ad.upsample_nearest2d(x, { size = { s[3] * 2, s[4] * 2 } })
  if self.use_conv then x = self.conv(x) end
  return x
end

--- 2x downsampling: a stride-2 3x3 conv when use_conv, else 2x2 average pooling.
local Downsample = nn.Module:extend("Downsample")
M.Downsample = Downsample
function Downsample:__init(channels, use_conv, out_channels, L)
  nn.Module.__init(self)
  L = L or nn
  self.channels, self.out_channels, self.use_conv = channels, out_channels or channels, use_conv
  if use_conv then
    self.op = L.Conv2d(channels, self.out_channels, 3, { stride = 2, padding = 1 })
  else
    assert(self.channels == self.out_channels, "Downsample: pooling cannot change the channel count")
    self.op = nn.AvgPool2d(2, 2)
  end
end
function Downsample:forward(x)
  local c = x:shape()[2]
  if c ~= self.channels then error(string.format("Downsample: expected %d channels, got %d", self.channels, c), 2) end
  return self.op(x)
end

local function checkpointed(flag, fn, ...)
  if flag and ad.is_grad_enabled() then return ad.checkpoint(fn, ...) end
  return fn(...)
end

--- Residual block conditioned on the timestep embedding.
-- opts: out_channels, use_conv, use_scale_shift_norm, use_checkpoint, up, down
local ResBlock = timestep_block("ResBlock")
M.ResBlock = ResBlock
function ResBlock:__init(channels, emb_channels, dropout, opts)
  nn.Module.__init(self)
  opts = opts or {}
  local L = opts.layers or nn
  self.channels, self.emb_channels, self.dropout = channels, emb_channels, dropout
  local out = opts.out_channels or channels
  self.out_channels = out
  self.use_conv = opts.use_conv or false
  self.use_checkpoint = opts.use_checkpoint or false
  self.use_scale_shift_norm = opts.use_scale_shift_norm or false

  self.in_layers = nn.Sequential(normalization(L, channels), nn.SiLU(), L.Conv2d(channels, out, 3, { padding = 1 }))
  self.updown = (opts.up or opts.down) and true or false
  if opts.up then
    self.h_upd = Upsample(channels, false)
    self.x_upd = Upsample(channels, false)
  elseif opts.down then
    self.h_upd = Downsample(channels, false)
    self.x_upd = Downsample(channels, false)
  else
    self.h_upd = nn.Identity()
    self.x_upd = self.h_upd
  end
  self.emb_layers = nn.Sequential(nn.SiLU(),
    L.Linear(emb_channels, self.use_scale_shift_norm and 2 * out or out))
  self.out_layers = nn.Sequential(normalization(L, out), nn.SiLU(), nn.Dropout(dropout),
    zero_module(L.Conv2d(out, out, 3, { padding = 1 })))
  if out == channels then
    self.skip_connection = nn.Identity()
  elseif self.use_conv then
    self.skip_connection = L.Conv2d(channels, out, 3, { padding = 1 })
  else
    self.skip_connection = L.Conv2d(channels, out, 1)
  end
end

function ResBlock:_forward(x, emb)
  local h
  if self.updown then
    local il = self.in_layers
    h = il[2](il[1](x))
    h = self.h_upd(h)
    x = self.x_upd(x)
    h = il[3](h)
  else
    h = self.in_layers(x)
  end
  local emb_out = self.emb_layers(emb)
  if emb_out:dtype() ~= h:dtype() then emb_out = emb_out:to(h:dtype()) end
  local es = emb_out:shape()
  for _ = #es + 1, h:dim() do es[#es + 1] = 1 end
  emb_out = emb_out:view(es)
  if self.use_scale_shift_norm then
    local ol = self.out_layers
    local scale, shift = emb_out:chunk(2, 2)
    h = ol[1](h) * (1 + scale) + shift
    h = ol[4](ol[3](ol[2](h)))
  else
    h = self.out_layers(h + emb_out)
  end
  return self.skip_connection(x) + h
end

function ResBlock:forward(x, emb)
  return checkpointed(self.use_checkpoint, function(a, b) return self:_forward(a, b) end, x, emb)
end

function ResBlock:extra_repr()
  return string.format("%d -> %d%s%s", self.channels, self.out_channels,
    self.updown and (getmetatable(self.h_upd) == Upsample and ", up" or ", down") or "",
    self.use_scale_shift_norm and ", scale_shift_norm" or "")
end

--- QKV attention, split q/k/v before the heads (use_new_attention_order).
local QKVAttention = nn.Module:extend("QKVAttention")
M.QKVAttention = QKVAttention
function QKVAttention:__init(n_heads) nn.Module.__init(self); self.n_heads = n_heads end

-- (B*H, C, T) q, k, v -> (B*H, C, T) attention output; softmax over the keys
local function attend(q, k, v, ch)
  local a = ad.scaled_dot_product_attention(q:transpose(2, 3), k:transpose(2, 3), v:transpose(2, 3),
    { scale = 1 / math.sqrt(ch) })
  return a:transpose(2, 3)
end

local function qkv_dims(name, qkv, n_heads)
  local s = qkv:shape()
  if #s ~= 3 then error(name .. ": expected qkv of shape (N, 3*H*C, T), got " .. shape_str(s), 3) end
  local bs, width, length = s[1], s[2], s[3]
  if width % (3 * n_heads) ~= 0 then
    error(string.format("%s: width %d is not divisible by 3 * %d heads", name, width, n_heads), 3)
  end
  return bs, width // (3 * n_heads), length
end

function QKVAttention:forward(qkv)
  local H = self.n_heads
  local bs, ch, length = qkv_dims("QKVAttention", qkv, H)
  local q, k, v = qkv:chunk(3, 2)
  local a = attend(q:reshape(bs * H, ch, length), k:reshape(bs * H, ch, length), v:reshape(bs * H, ch, length), ch)
  return a:reshape(bs, H * ch, length)
end
function QKVAttention:extra_repr() return "n_heads=" .. self.n_heads end

--- QKV attention, split heads before q/k/v (the legacy order of the original checkpoints).
local QKVAttentionLegacy = nn.Module:extend("QKVAttentionLegacy")
M.QKVAttentionLegacy = QKVAttentionLegacy
function QKVAttentionLegacy:__init(n_heads) nn.Module.__init(self); self.n_heads = n_heads end
function QKVAttentionLegacy:forward(qkv)
  local H = self.n_heads
  local bs, ch, length = qkv_dims("QKVAttentionLegacy", qkv, H)
  local q, k, v = qkv:reshape(bs * H, ch * 3, length):split(ch, 2)
  local a = attend(q, k, v, ch)
  return a:reshape(bs, H * ch, length)
end
QKVAttentionLegacy.extra_repr = QKVAttention.extra_repr

--- Self-attention over the spatial positions.
local AttentionBlock = nn.Module:extend("AttentionBlock")
M.AttentionBlock = AttentionBlock
function AttentionBlock:__init(channels, opts)
  nn.Module.__init(self)
  opts = opts or {}
  self.channels = channels
  local nhc = opts.num_head_channels or -1
  if nhc == -1 then
    self.num_heads = opts.num_heads or 1
  else
    if channels % nhc ~= 0 then
      error(string.format("AttentionBlock: q,k,v channels %d is not divisible by num_head_channels %d", channels, nhc), 3)
    end
    self.num_heads = channels // nhc
  end
  if channels % self.num_heads ~= 0 then
    error(string.format("AttentionBlock: %d channels do not split into %d heads", channels, self.num_heads), 3)
  end
  self.use_checkpoint = opts.use_checkpoint or false
  local L = opts.layers or nn
  self.norm = normalization(L, channels)
  self.qkv = L.Conv1d(channels, channels * 3, 1)
  if opts.use_new_attention_order then
    self.attention = QKVAttention(self.num_heads)
  else
    self.attention = QKVAttentionLegacy(self.num_heads)
  end
  self.proj_out = zero_module(L.Conv1d(channels, channels, 1))
end

function AttentionBlock:_forward(x)
  local s = x:shape()
  local b, c = s[1], s[2]
  local xf = x:reshape(b, c, -1)
  local qkv = self.qkv(self.norm(xf))
  local h = self.proj_out(self.attention(qkv))
  return (xf + h):reshape(s)
end

function AttentionBlock:forward(x)
  return checkpointed(self.use_checkpoint, function(a) return self:_forward(a) end, x)
end

------------------------------------------------------------------------------
-- the U-Net

local DIFFUSION_KEYS = {
  diffusion_steps = true, steps = true, noise_schedule = true, timestep_respacing = true, use_kl = true,
  predict_xstart = true, rescale_timesteps = true, rescale_learned_sigmas = true, sigma_small = true,
}
local MODEL_KEYS = {
  image_size = true, num_channels = true, num_res_blocks = true, channel_mult = true,
  attention_resolutions = true, num_heads = true, num_head_channels = true, num_heads_upsample = true,
  use_scale_shift_norm = true, resblock_updown = true, use_new_attention_order = true, learn_sigma = true,
  class_cond = true, dropout = true, use_fp16 = true, use_checkpoint = true, in_channels = true,
  out_channels = true, num_classes = true, conv_resample = true, attention_ds = true,
}
M.MODEL_KEYS, M.DIFFUSION_KEYS = MODEL_KEYS, DIFFUSION_KEYS

local function int_list(fname, what, v)
  local out = {}
  if type(v) == "string" then
    for part in (v .. ","):gmatch("([^,]*),") do
      local n = part:match("^%s*(%d+)%s*$")
      if not n then error(string.format("%s: bad %s '%s' (expected comma-separated integers)", fname, what, v), 4) end
      out[#out + 1] = math.tointeger(tonumber(n))
    end
  elseif type(v) == "table" then
    for i, n in ipairs(v) do
      if math.type(n) ~= "integer" or n < 1 then
        error(string.format("%s: %s[%d] must be a positive integer, got %s", fname, what, i, tostring(n)), 4)
      end
      out[i] = n
    end
  elseif math.type(v) == "integer" then
    out[1] = v
  else
    error(string.format("%s: %s must be a string like \"1,2,2\" or a list of integers, got %s", fname, what, type(v)), 4)
  end
  return out
end

--- Resolve create_model's options into UNetModel's arguments (no allocation).
function M.resolve(opts)
  local fname = "UNetModel"
  opts = opts or {}
  for k in pairs(opts) do
    if not MODEL_KEYS[k] and not DIFFUSION_KEYS[k] then
      error(string.format("%s: unknown option '%s'", fname, tostring(k)), 3)
    end
  end
  local r = {}
  r.image_size = opts.image_size or 64
  r.model_channels = opts.num_channels or 128
  r.num_res_blocks = opts.num_res_blocks or 2
  for _, k in ipairs { "image_size", "model_channels", "num_res_blocks" } do
    if math.type(r[k]) ~= "integer" or r[k] < 1 then
      error(string.format("%s: %s must be a positive integer, got %s", fname,
        k == "model_channels" and "num_channels" or k, tostring(r[k])), 3)
    end
  end
  local cm = opts.channel_mult or ""
  if cm == "" then
    local by_size = { [512] = { 1, 1, 2, 2, 4, 4 }, [256] = { 1, 1, 2, 2, 4, 4 }, [128] = { 1, 1, 2, 3, 4 },
                      [64] = { 1, 2, 3, 4 } }
    cm = by_size[r.image_size]
    if not cm then
      error(string.format("%s: unsupported image size: %d (give channel_mult for sizes other than 64, 128, 256, 512)",
        fname, r.image_size), 3)
    end
    cm = { table.unpack(cm) }
  else
    cm = int_list(fname, "channel_mult", cm)
  end
  r.channel_mult = cm
  if opts.attention_ds then
    r.attention_ds = int_list(fname, "attention_ds", opts.attention_ds)
  else
    local res = opts.attention_resolutions
    if res == nil then res = "16,8" end
    r.attention_ds = {}
    if res ~= "" then
      for _, v in ipairs(int_list(fname, "attention_resolutions", res)) do
        r.attention_ds[#r.attention_ds + 1] = r.image_size // v
      end
    end
  end
  r.dropout = opts.dropout or 0
  if type(r.dropout) ~= "number" or r.dropout < 0 or r.dropout >= 1 then
    error(string.format("%s: dropout must be in [0, 1), got %s", fname, tostring(r.dropout)), 3)
  end
  r.in_channels = opts.in_channels or 3
  r.out_channels = opts.out_channels or (opts.learn_sigma and 2 * r.in_channels or r.in_channels)
  r.conv_resample = opts.conv_resample ~= false
  r.num_classes = opts.num_classes or (opts.class_cond and 1000 or nil)
  if opts.num_classes and opts.class_cond == false then r.num_classes = nil end
  r.use_checkpoint = opts.use_checkpoint or false
  r.use_fp16 = opts.use_fp16 or false
  r.num_heads = opts.num_heads or 1
  r.num_head_channels = opts.num_head_channels or -1
  r.num_heads_upsample = opts.num_heads_upsample or -1
  if r.num_heads_upsample == -1 then r.num_heads_upsample = r.num_heads end
  r.use_scale_shift_norm = opts.use_scale_shift_norm or false
  r.resblock_updown = opts.resblock_updown or false
  r.use_new_attention_order = opts.use_new_attention_order or false
  return r
end

local UNetModel = nn.Module:extend("UNetModel")
M.UNetModel = UNetModel

local function contains(list, v)
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

-- layers: the layer factory (internal; M.state_dict_shapes passes SHAPES)
function UNetModel:__init(opts, layers)
  nn.Module.__init(self)
  local L = layers or nn
  local r = M.resolve(opts)
  self.config = r
  for k, v in pairs(r) do rawset(self, k, v) end
  self.dtype = r.use_fp16 and "f16" or "f32"

  local mc, dropout = r.model_channels, r.dropout
  local ted = mc * 4
  local function resblock(ch, out, extra)
    local o = { out_channels = out, use_checkpoint = r.use_checkpoint, use_scale_shift_norm = r.use_scale_shift_norm,
                layers = L }
    if extra then for k, v in pairs(extra) do o[k] = v end end
    return ResBlock(ch, ted, dropout, o)
  end
  local function attn(ch, heads)
    return AttentionBlock(ch, { use_checkpoint = r.use_checkpoint, num_heads = heads,
      num_head_channels = r.num_head_channels, use_new_attention_order = r.use_new_attention_order, layers = L })
  end

  self.time_embed = nn.Sequential(L.Linear(mc, ted), nn.SiLU(), L.Linear(ted, ted))
  if r.num_classes then self.label_emb = L.Embedding(r.num_classes, ted) end

  self.input_blocks = nn.ModuleList { TimestepEmbedSequential(L.Conv2d(r.in_channels, mc, 3, { padding = 1 })) }
  local input_block_chans = { mc }
  local ch, ds = mc, 1
  for level, mult in ipairs(r.channel_mult) do
    for _ = 1, r.num_res_blocks do
      local layers = { resblock(ch, mult * mc) }
      ch = mult * mc
      if contains(r.attention_ds, ds) then layers[#layers + 1] = attn(ch, r.num_heads) end
      self.input_blocks:append(TimestepEmbedSequential(layers))
      input_block_chans[#input_block_chans + 1] = ch
    end
    if level ~= #r.channel_mult then
      local out_ch = ch
      self.input_blocks:append(TimestepEmbedSequential(
        r.resblock_updown and resblock(ch, out_ch, { down = true })
        or Downsample(ch, r.conv_resample, out_ch, L)))
      ch = out_ch
      input_block_chans[#input_block_chans + 1] = ch
      ds = ds * 2
    end
  end

  self.middle_block = TimestepEmbedSequential(resblock(ch), attn(ch, r.num_heads), resblock(ch))

  self.output_blocks = nn.ModuleList {}
  for level = #r.channel_mult, 1, -1 do
    local mult = r.channel_mult[level]
    for i = 0, r.num_res_blocks do
      local ich = table.remove(input_block_chans)
      local layers = { resblock(ch + ich, mc * mult) }
      ch = mc * mult
      if contains(r.attention_ds, ds) then layers[#layers + 1] = attn(ch, r.num_heads_upsample) end
      if level > 1 and i == r.num_res_blocks then
        local out_ch = ch
        layers[#layers + 1] = r.resblock_updown and resblock(ch, out_ch, { up = true })
          or Upsample(ch, r.conv_resample, out_ch, L)
        ds = ds // 2
      end
      self.output_blocks:append(TimestepEmbedSequential(layers))
    end
  end

  self.out = nn.Sequential(normalization(L, ch), nn.SiLU(), zero_module(L.Conv2d(mc, r.out_channels, 3, { padding = 1 })))
  if r.use_fp16 and L == nn then self:convert_to_fp16() end
end

-- SHAPES: stand-ins for the parametrised layers that record the shapes of the
-- parameters they would register, so state_dict_shapes can list a model's
-- state dict without allocating it (the ImageNet-64 model is 1.2 GB in f32).
local ShapeOnly = nn.Module:extend("ShapeOnly")
function ShapeOnly:__init(params) nn.Module.__init(self); self._param_shapes = params end
local function kernel(k, n)
  local out = {}
  for i = 1, n do out[i] = type(k) == "table" and k[i] or k end
  return out
end
local SHAPES = {
  Conv2d = function(cin, cout, k)
    local kk = kernel(k, 2)
    return ShapeOnly { { "weight", { cout, cin, kk[1], kk[2] } }, { "bias", { cout } } }
  end,
  Conv1d = function(cin, cout, k)
    return ShapeOnly { { "weight", { cout, cin, kernel(k, 1)[1] } }, { "bias", { cout } } }
  end,
  Linear = function(fin, fout) return ShapeOnly { { "weight", { fout, fin } }, { "bias", { fout } } } end,
  GroupNorm = function(_, c) return ShapeOnly { { "weight", { c } }, { "bias", { c } } } end,
  Embedding = function(n, d) return ShapeOnly { { "weight", { n, d } } } end,
}

--- The state dict a UNetModel(opts) would have, without allocating it:
-- an ordered list of {name, shape} (state_dict()'s order) and the number of
-- parameters.
function M.state_dict_shapes(opts)
  local m = UNetModel(opts, SHAPES)
  local out, total = {}, 0
  for prefix, mod in m:named_modules() do
    for _, p in ipairs(rawget(mod, "_param_shapes") or {}) do
      local n = 1
      for _, d in ipairs(p[2]) do n = n * d end
      total = total + n
      out[#out + 1] = { (prefix == "" and "" or prefix .. ".") .. p[1], p[2] }
    end
  end
  return out, total
end

local CONV = { Conv1d = true, Conv2d = true }
local function convert_convs(m, dtype)
  m:apply(function(l) if CONV[l._class_name] then l:to(dtype) end end)
end

--- Convert the torso's convolutions to f16 (guided-diffusion's convert_to_fp16).
-- Take model:parameters() again afterwards: the converted tensors are new.
function UNetModel:convert_to_fp16()
  for _, part in ipairs { self.input_blocks, self.middle_block, self.output_blocks } do convert_convs(part, "f16") end
  self.dtype = "f16"
  return self
end

--- Back to f32 (convert_to_fp32).
function UNetModel:convert_to_fp32()
  for _, part in ipairs { self.input_blocks, self.middle_block, self.output_blocks } do convert_convs(part, "f32") end
  self.dtype = "f32"
  return self
end

function UNetModel:forward(x, timesteps, y)
  if type(y) == "table" and not ad.is_tensor(y) then y = y.y end   -- model_kwargs
  if not ad.is_tensor(x) or x:dim() ~= 4 then
    error("UNetModel: x must be a 4-D tensor (N, C, H, W), got " ..
      (ad.is_tensor(x) and shape_str(x:shape()) or type(x)), 2)
  end
  local s = x:shape()
  if s[2] ~= self.in_channels then
    error(string.format("UNetModel: x must have %d channels, got shape %s", self.in_channels, shape_str(s)), 2)
  end
  if (y ~= nil) ~= (self.num_classes ~= nil) then
    error("UNetModel: must specify y if and only if the model is class-conditional", 2)
  end
  if not ad.is_tensor(timesteps) or timesteps:dim() ~= 1 or timesteps:shape()[1] ~= s[1] then
    error(string.format("UNetModel: timesteps must be a 1-D tensor of %d values, got %s", s[1],
      ad.is_tensor(timesteps) and shape_str(timesteps:shape()) or type(timesteps)), 2)
  end

  -- the sinusoidal embedding is f32 (as the reference); a model converted with
  -- to("f64") gets it in f64
  local ts = M.timestep_embedding(timesteps, self.model_channels)
  local wdt = self.time_embed[1].weight:dtype()
  if wdt ~= ts:dtype() and wdt == "f64" then ts = ts:to(wdt) end
  local emb = self.time_embed(ts)
  if self.num_classes then
    if not ad.is_tensor(y) or y:dim() ~= 1 or y:shape()[1] ~= s[1] then
      error(string.format("UNetModel: y must be a 1-D tensor of %d class labels, got %s", s[1],
        ad.is_tensor(y) and shape_str(y:shape()) or type(y)), 2)
    end
    emb = emb + self.label_emb(y)
  end

  -- the torso's dtype: f16 after convert_to_fp16, else that of its weights
  -- (f32, or f64 after to("f64"))
  local hs = {}
  local h = x
  local torso_dtype = self.input_blocks[1][1].weight:dtype()
  if h:dtype() ~= torso_dtype then h = h:to(torso_dtype) end
  for _, name in ipairs(self.input_blocks._module_names) do
    h = rawget(self.input_blocks, name)(h, emb)
    hs[#hs + 1] = h
  end
  h = self.middle_block(h, emb)
  for _, name in ipairs(self.output_blocks._module_names) do
    h = ad.cat({ h, table.remove(hs) }, 2)
    h = rawget(self.output_blocks, name)(h, emb)
  end
  if h:dtype() ~= x:dtype() then h = h:to(x:dtype()) end
  return self.out(h)
end

------------------------------------------------------------------------------
-- configurations and checkpoints

local CONFIGS = {
  -- the paper's generator: guided-diffusion's ImageNet 64x64 class-conditional
  -- model (64x64_diffusion.pt). The official flags also set use_fp16; it is off
  -- here because it only changes the runtime dtype, which the CPU backend does
  -- not speed up; set it on a GPU.
  imagenet64 = {
    image_size = 64, num_channels = 192, num_res_blocks = 3, channel_mult = "", attention_resolutions = "32,16,8",
    num_heads = 4, num_head_channels = 64, num_heads_upsample = -1, learn_sigma = true, class_cond = true,
    use_scale_shift_norm = true, resblock_updown = true, use_new_attention_order = true, dropout = 0.1,
    use_fp16 = false, use_checkpoint = false,
    diffusion_steps = 1000, noise_schedule = "cosine", timestep_respacing = "", use_kl = false,
    predict_xstart = false, rescale_timesteps = false, rescale_learned_sigmas = false,
  },
}

--- A copy of a named configuration: create_model_and_diffusion's options
-- (model and diffusion), usable by UNetModel and ad.diffusion.create.
function M.config(name)
  local c = CONFIGS[name]
  if not c then
    local names = {}
    for k in pairs(CONFIGS) do names[#names + 1] = k end
    table.sort(names)
    error(string.format("adm.config: unknown configuration '%s' (known: %s)", tostring(name), table.concat(names, ", ")), 2)
  end
  local out = {}
  for k, v in pairs(c) do out[k] = v end
  return out
end

--- The model options of a config (drops the diffusion options).
function M.model_options(cfg)
  local out = {}
  for k, v in pairs(cfg) do if MODEL_KEYS[k] then out[k] = v end end
  return out
end

-- a table of name -> tensor (a state dict)?
local function is_state_dict(t)
  if type(t) ~= "table" then return false end
  local any = false
  for k, v in pairs(t) do
    if type(k) ~= "string" or not ad.is_tensor(v) then return false end
    any = true
  end
  return any
end

--- Unwrap a loaded checkpoint: {ema=...}, {model=...}, {state_dict=...}
-- wrappers (prefer: which wrapper wins when several exist, "ema" by default),
-- then the "module." (DataParallel) and "model." prefixes when every key has one.
function M.unwrap_state_dict(sd, prefer)
  local order = { prefer or "ema", "ema", "ema_model", "model_ema", "state_dict", "model", "net" }
  for _ = 1, 4 do
    if is_state_dict(sd) then break end
    if type(sd) ~= "table" then break end
    local nxt
    for _, k in ipairs(order) do
      if type(sd[k]) == "table" then nxt = sd[k]; break end
    end
    if not nxt then break end
    sd = nxt
  end
  if not is_state_dict(sd) then
    error("adm: the checkpoint holds no state dict (expected name -> tensor, possibly under ema/model/state_dict)", 3)
  end
  for _, prefix in ipairs { "module.", "model." } do
    local all = true
    for k in pairs(sd) do
      if k:sub(1, #prefix) ~= prefix then all = false; break end
    end
    if all then
      local out = {}
      for k, v in pairs(sd) do out[k:sub(#prefix + 1)] = v end
      sd = out
    end
  end
  return sd
end

--- Build a UNetModel and load a checkpoint into it (strict by default).
-- opts: a config name ("imagenet64") or an options table; fields strict (true),
-- prefer ("ema"), eval (true: the model is put in eval mode).
function M.from_checkpoint(path, opts)
  if type(path) ~= "string" then error("adm.from_checkpoint: expected a file path, got " .. type(path), 2) end
  if opts == nil then
    error("adm.from_checkpoint: give the model options (a table or a config name such as 'imagenet64')", 2)
  end
  local strict, prefer, eval = true, nil, true
  if type(opts) == "string" then
    opts = M.config(opts)
  else
    if type(opts) ~= "table" then
      error("adm.from_checkpoint: opts must be a config name or an options table, got " .. type(opts), 2)
    end
    local src = opts
    opts = {}
    for k, v in pairs(src) do opts[k] = v end
    if opts.strict ~= nil then strict = opts.strict; opts.strict = nil end
    if opts.prefer ~= nil then prefer = opts.prefer; opts.prefer = nil end
    if opts.eval ~= nil then eval = opts.eval; opts.eval = nil end
    if type(opts.config) == "string" then
      local base = M.config(opts.config)
      opts.config = nil
      for k, v in pairs(opts) do base[k] = v end
      opts = base
    end
  end
  local sd = M.unwrap_state_dict(ad.load(path), prefer)
  local model = UNetModel(opts)
  model:load_state_dict(sd, { strict = strict })
  if eval then model:eval() end
  return model
end

return M
