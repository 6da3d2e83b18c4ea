-- The ADM U-Net (advdiff.models.adm) against guided-diffusion's UNetModel:
-- adm_tiny (every feature of the ImageNet-64 model at a small size): output,
-- intermediates and gradients from the reference's own run; the state dict
-- names, shapes and order of adm_tiny and of the paper's ImageNet-64 config;
-- gradient checkpointing, fp16, the other architecture switches and errors.
local ad = require "advdiff"
local T = require "advdiff.testing"
local adm = require "advdiff.models.adm"

local fixtures_dir = T.fixtures_dir
local FIX = fixtures_dir()
-- fixture files are read once (the model runs are what this file spends its time on)
local cache = {}
local function load(name)
  if not cache[name] then cache[name] = ad.load(FIX .. "/adm_tiny/" .. name) end
  return cache[name]
end

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  assert(tostring(err):find(pattern, 1, true), "error '" .. tostring(err) .. "' does not contain '" .. pattern .. "'")
end

local function max_abs(t) return t:abs():max():item() end
local function shape_key(s) return table.concat(s, ",") end

-- max|got - ref| <= rel * max|ref| + abs
local function check(name, got, ref, rel, abs)
  if shape_key(got:shape()) ~= shape_key(ref:shape()) then
    error(string.format("%s: shape [%s] vs reference [%s]", name, shape_key(got:shape()), shape_key(ref:shape())), 2)
  end
  local diff = max_abs(got:double() - ref:double())
  local tol = rel * max_abs(ref:double()) + (abs or 0)
  if not (diff <= tol) then error(string.format("%s: max|diff| = %.4g > %.4g", name, diff, tol), 2) end
end

-- A small JSON reader for the manifests: objects keep their key order as a
-- list of {key, value} pairs in `_order`.
local function json_decode(s)
  local pos = 1
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    local out, i = {}, pos + 1
    while true do
      local c = s:sub(i, i)
      if c == '"' then break end
      if c == "\\" then
        local e = s:sub(i + 1, i + 1)
        local map = { n = "\n", t = "\t", r = "\r", b = "\b", f = "\f", ["/"] = "/", ["\\"] = "\\", ['"'] = '"' }
        if e == "u" then out[#out + 1] = utf8.char(tonumber(s:sub(i + 2, i + 5), 16)); i = i + 6
        else out[#out + 1] = map[e]; i = i + 2 end
      else
        out[#out + 1] = c; i = i + 1
      end
    end
    pos = i + 1
    return table.concat(out)
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local obj, order = {}, {}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; obj._order = order; return obj end
      while true do
        ws()
        local k = str(); ws()
        assert(s:sub(pos, pos) == ":"); pos = pos + 1
        local v = value()
        obj[k] = v
        order[#order + 1] = { k, v }
        ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "}" then break end
        assert(d == ",", "json: expected , or }")
      end
      obj._order = order
      return obj
    elseif c == "[" then
      local arr = {}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return arr end
      while true do
        arr[#arr + 1] = value(); ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "]" then break end
        assert(d == ",", "json: expected , or ]")
      end
      return arr
    elseif c == '"' then return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4; return nil
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      pos = pos + #num
      return math.tointeger(tonumber(num)) or tonumber(num)
    end
  end
  return value()
end

local function manifest(dir)
  local f = assert(io.open(FIX .. "/" .. dir .. "/manifest.json", "r"))
  local m = json_decode(f:read("a"))
  f:close()
  return m
end

local TINY = manifest("adm_tiny")
local TINY_OPTS = {}
for k, v in pairs(TINY.config.create_model_and_diffusion_kwargs) do if k ~= "_order" then TINY_OPTS[k] = v end end

local function tiny_model(extra)
  local o = {}
  for k, v in pairs(TINY_OPTS) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  local m = adm.UNetModel(o)
  m:load_state_dict(load("adm_tiny.pt"))
  return m:eval()
end

------------------------------------------------------------------------------ state dicts

test("adm_tiny: state_dict names, shapes, order and parameter count are guided-diffusion's", function()
  local m = adm.UNetModel(TINY_OPTS)
  local sd, keys = m:state_dict()
  local want = TINY.state_dict_keys_and_shapes._order
  assert(#keys == #want, string.format("%d keys, expected %d", #keys, #want))
  for i, e in ipairs(want) do
    assert(keys[i] == e[1], string.format("key %d is %s, expected %s", i, keys[i], e[1]))
    assert(shape_key(sd[e[1]]:shape()) == shape_key(e[2]), e[1] .. ": shape [" .. shape_key(sd[e[1]]:shape()) .. "]")
  end
  assert(m:num_parameters() == TINY.num_parameters)
  -- the allocation-free listing agrees with the real module tree
  local shapes, total = adm.state_dict_shapes(TINY_OPTS)
  assert(total == TINY.num_parameters and #shapes == #keys)
  for i, e in ipairs(shapes) do assert(e[1] == keys[i] and shape_key(e[2]) == shape_key(sd[keys[i]]:shape()), e[1]) end
end)

test("ImageNet-64 config: exactly the reference's 541 state_dict keys and 295,904,454 parameters", function()
  local ref = manifest("adm64_keys")
  local cfg = adm.config("imagenet64")
  for _, e in ipairs(ref.model_flags._order) do
    local k, v = e[1], e[2]
    if k ~= "use_fp16" then assert(cfg[k] == v, "config." .. k .. " = " .. tostring(cfg[k]) .. ", expected " .. tostring(v)) end
  end
  assert(cfg.channel_mult == "" and cfg.num_heads == 4 and cfg.num_heads_upsample == -1)
  local shapes, total = adm.state_dict_shapes(cfg)
  local want = ref.state_dict_keys_and_shapes._order
  assert(#shapes == ref.num_state_dict_keys and #want == #shapes, #shapes .. " keys")
  for i, e in ipairs(want) do
    assert(shapes[i][1] == e[1], string.format("key %d is %s, expected %s", i, shapes[i][1], e[1]))
    assert(shape_key(shapes[i][2]) == shape_key(e[2]), e[1])
  end
  assert(total == ref.total_parameters, "total " .. total)
  -- the config's diffusion options build the paper's diffusion
  local d = ad.diffusion.create(cfg)
  assert(d.num_timesteps == 1000 and d.model_var_type == "learned_range")
  raises("unknown configuration 'imagenet65'", adm.config, "imagenet65")
end)

------------------------------------------------------------------------------ forward and gradients

test("adm_tiny forward: embeddings, intermediates and output match the reference", function()
  local m = tiny_model()
  local x, t, y = load("x.npy"), load("t.npy"), load("y.npy")
  local ts = adm.timestep_embedding(t, 32)
  check("t_sinusoidal", ts, load("t_sinusoidal.npy"), 1e-6, 1e-6)
  local emb = ad.no_grad(function() return m.time_embed(ts) + m.label_emb(y) end)
  check("emb", emb, load("emb.npy"), 1e-5, 1e-6)
  local h_last, h_mid = ad.no_grad(function()
    local h = x
    for i = 1, #m.input_blocks do h = m.input_blocks[i](h, emb) end
    return h, m.middle_block(h, emb)
  end)
  check("h_input_last", h_last, load("h_input_last.npy"), 1e-4, 1e-5)
  check("h_middle", h_mid, load("h_middle.npy"), 1e-4, 1e-5)
  local out = ad.no_grad(function() return m:forward(x, t, y) end)
  check("output", out, load("output.npy"), 1e-4, 1e-5)
  -- y as a model_kwargs table
  local out2 = ad.no_grad(function() return m(x, t, { y = y }) end)
  T.assert_close(out2, out, { atol = 0, rtol = 0 })
end)

local GRADS = {
  { "input_blocks.0.0.weight", "grad_input_blocks_0_0_weight.npy" },
  { "input_blocks.4.1.qkv.weight", "grad_input_blocks_4_1_qkv_weight.npy" },
  { "out.2.weight", "grad_out_2_weight.npy" },
  { "label_emb.weight", "grad_label_emb_weight.npy" },
}

local plain_grads
local function tiny_grads(extra)
  if extra == nil and plain_grads then return plain_grads end
  local m = tiny_model(extra)
  local x = load("x.npy"):clone()
  x.requires_grad = true
  local loss = (m(x, load("t.npy"), load("y.npy")) * load("loss_weight.npy")):sum()
  loss:backward()
  local params = {}
  for name, p in m:named_parameters() do params[name] = p end
  local g = { x = x.grad, loss = loss }
  for _, e in ipairs(GRADS) do g[e[1]] = params[e[1]].grad end
  if extra == nil then plain_grads = g end
  return g
end

test("adm_tiny gradients of (output * loss_weight).sum() match the reference", function()
  local g = tiny_grads()
  check("loss", g.loss:view(1), load("loss.npy"), 1e-5, 1e-5)
  check("grad x", g.x, load("grad_x.npy"), 1e-3)
  for _, e in ipairs(GRADS) do check("grad " .. e[1], g[e[1]], load(e[2]), 1e-3) end
end)

test("use_checkpoint recomputes blocks in backward with the same gradients", function()
  local plain = tiny_grads()
  local ck = tiny_grads { use_checkpoint = true }
  -- the same values up to the f32 rounding of summing gradient contributions in another order
  T.assert_close(ck.loss, plain.loss, { atol = 0, rtol = 1e-6 })
  check("checkpointed grad x", ck.x, plain.x, 1e-5)
  for _, e in ipairs(GRADS) do check("checkpointed grad " .. e[1], ck[e[1]], plain[e[1]], 1e-5) end
  check("checkpointed grad x vs reference", ck.x, load("grad_x.npy"), 1e-3)
end)

test("legacy attention order: differs from the new order as in the reference", function()
  -- manifest sensitivity_info: the same weights with use_new_attention_order=False
  -- differ from the fixture output by max_abs 0.0851619765162468
  local m = tiny_model { use_new_attention_order = false }
  local out = ad.no_grad(function() return m(load("x.npy"), load("t.npy"), load("y.npy")) end)
  local diff = max_abs(out - load("output.npy"))
  local want = TINY.sensitivity_info["use_new_attention_order=False"].max_abs
  assert(math.abs(diff - want) <= 1e-4, string.format("legacy order differs by %.6g, reference %.6g", diff, want))
end)

------------------------------------------------------------------------------ other switches

local SMALL = { image_size = 8, num_channels = 32, num_res_blocks = 1, channel_mult = "1,2", attention_resolutions = "4" }

local function with(base, extra)
  local o = {}
  for k, v in pairs(base) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

test("separate Downsample/Upsample (conv_resample), no scale-shift norm, unconditional, num_heads", function()
  local m = adm.UNetModel(with(SMALL, { num_heads = 2 }))
  local sd, keys = m:state_dict()
  local has = {}
  for _, k in ipairs(keys) do has[k] = true end
  -- guided-diffusion's names for these layers
  assert(has["input_blocks.2.0.op.weight"], "Downsample conv")
  assert(has["output_blocks.1.2.conv.weight"], "Upsample conv (after the ResBlock and the attention)")
  assert(not has["label_emb.weight"])
  assert(shape_key(sd["input_blocks.1.0.emb_layers.1.weight"]:shape()) == "32,128", "no scale-shift: out channels")
  assert(shape_key(sd["out.2.weight"]:shape()) == "3,32,3,3", "3 output channels without learn_sigma")
  assert(m.input_blocks[4][2].num_heads == 2 and m.middle_block[2].num_heads == 2)
  local x = ad.randn(2, 3, 8, 8)
  local out = ad.no_grad(function() return m(x, ad.tensor({ 3, 999 }, { dtype = "i64" })) end)
  assert(shape_key(out:shape()) == "2,3,8,8")
  -- conv_resample = false: pooling and plain nearest upsampling, no parameters
  local m2 = adm.UNetModel(with(SMALL, { conv_resample = false, learn_sigma = true, class_cond = true,
    num_head_channels = 16 }))
  local sd2 = m2:state_dict()
  assert(sd2["input_blocks.2.0.op.weight"] == nil and sd2["output_blocks.1.2.conv.weight"] == nil)
  assert(m2.middle_block[2].num_heads == 4)
  local out2 = ad.no_grad(function()
    return m2(x, ad.tensor({ 3, 999 }, { dtype = "i64" }), ad.tensor({ 0, 999 }, { dtype = "i64" }))
  end)
  assert(shape_key(out2:shape()) == "2,6,8,8")
  -- num_heads_upsample applies to the output blocks only; channel_mult as a table
  local m3 = adm.UNetModel(with(SMALL, { num_heads = 1, num_heads_upsample = 4, channel_mult = { 1, 2 } }))
  assert(m3.input_blocks[4][2].num_heads == 1 and m3.output_blocks[1][2].num_heads == 4)
end)

test("gradcheck through a small ADM in f64 (resblock up/down, attention, scale-shift)", function()
  local m = adm.UNetModel { image_size = 4, num_channels = 32, num_res_blocks = 1, channel_mult = "1,1",
    attention_resolutions = "4,2", num_head_channels = 16, use_scale_shift_norm = true, resblock_updown = true,
    use_new_attention_order = true, learn_sigma = true, class_cond = true }
  m:to("f64")
  -- the zero-initialised output convs would hide every path
  ad.no_grad(function()
    for _, p in ipairs(m:parameters()) do p:copy_(p + ad.randn(p:shape(), { dtype = "f64" }) * 0.05) end
  end)
  local x = ad.randn(1, 3, 4, 4, { dtype = "f64" })
  x.requires_grad = true
  local t, y = ad.tensor({ 17 }, { dtype = "i64" }), ad.tensor({ 5 }, { dtype = "i64" })
  T.gradcheck(function(v) return m(v, t, y) end, { x }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
  -- the legacy attention order as well
  local a = adm.AttentionBlock(32, { num_heads = 2 })
  a:to("f64")
  ad.no_grad(function() for _, p in ipairs(a:parameters()) do p:copy_(p + ad.randn(p:shape(), { dtype = "f64" }) * 0.1) end end)
  local h = ad.randn(1, 32, 2, 3, { dtype = "f64" })
  h.requires_grad = true
  T.gradcheck(function(v) return a(v) end, { h }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
end)

test("legacy and new attention orders agree when there is a single head", function()
  local q = ad.randn(2, 3 * 16, 10)
  T.assert_close(adm.QKVAttention(1)(q), adm.QKVAttentionLegacy(1)(q), { atol = 1e-6, rtol = 1e-5 })
  -- against the explicit softmax(q^T k / sqrt(C)) v of QKVAttentionLegacy
  local H, C, L = 2, 8, 5
  local qkv = ad.randn(1, 3 * H * C, L, { dtype = "f64" })
  local got = adm.QKVAttentionLegacy(H)(qkv)
  local parts = {}
  for h = 1, H do
    local blk = qkv:narrow(2, (h - 1) * 3 * C + 1, 3 * C):select(1, 1)
    local qq, kk, vv = blk:narrow(1, 1, C), blk:narrow(1, C + 1, C), blk:narrow(1, 2 * C + 1, C)
    local w = ad.softmax(ad.matmul(qq:t(), kk) / math.sqrt(C), -1)         -- (T, S)
    parts[h] = ad.matmul(vv, w:t())                                         -- (C, T)
  end
  T.assert_close(got:select(1, 1), ad.cat(parts, 1), { atol = 1e-12, rtol = 1e-10 })
  local got2 = adm.QKVAttention(H)(qkv)
  local q2, k2, v2 = qkv:select(1, 1):chunk(3, 1)
  for h = 1, H do
    local qq, kk, vv = q2:narrow(1, (h - 1) * C + 1, C), k2:narrow(1, (h - 1) * C + 1, C), v2:narrow(1, (h - 1) * C + 1, C)
    local w = ad.softmax(ad.matmul(qq:t(), kk) / math.sqrt(C), -1)
    T.assert_close(got2:select(1, 1):narrow(1, (h - 1) * C + 1, C), ad.matmul(vv, w:t()), { atol = 1e-12, rtol = 1e-10 })
  end
end)

test("use_fp16 runs the torso in f16 and stays close to f32", function()
  local m16 = tiny_model { use_fp16 = true }
  assert(m16.dtype == "f16")
  local sd = m16:state_dict()
  assert(sd["input_blocks.1.0.in_layers.2.weight"]:dtype() == "f16", "torso convs are f16")
  assert(sd["input_blocks.1.0.in_layers.0.weight"]:dtype() == "f32", "GroupNorm stays f32")
  assert(sd["input_blocks.1.0.emb_layers.1.weight"]:dtype() == "f32", "linear layers stay f32")
  assert(sd["out.2.weight"]:dtype() == "f32" and sd["time_embed.0.weight"]:dtype() == "f32")
  local out = ad.no_grad(function() return m16(load("x.npy"), load("t.npy"), load("y.npy")) end)
  assert(out:dtype() == "f32")
  check("fp16 output", out, load("output.npy"), 2e-2)
  m16:convert_to_fp32()
  assert(m16:state_dict()["input_blocks.1.0.in_layers.2.weight"]:dtype() == "f32")
end)

test("dropout is active in train mode only", function()
  local m = adm.UNetModel(with(SMALL, { dropout = 0.5 }))
  ad.no_grad(function() for _, p in ipairs(m:parameters()) do p:copy_(p + ad.randn(p:shape()) * 0.05) end end)
  local x, t = ad.randn(1, 3, 8, 8), ad.tensor({ 10 }, { dtype = "i64" })
  m:eval()
  local a = ad.no_grad(function() return m(x, t) end)
  local b = ad.no_grad(function() return m(x, t) end)
  T.assert_close(a, b, { atol = 0, rtol = 0 })
  m:train()
  local c = ad.no_grad(function() return m(x, t) end)
  assert(max_abs(c - a) > 1e-4, "dropout changes the train-mode output")
end)

test("timestep_embedding: cos then sin halves, odd dims zero-padded, fractional timesteps", function()
  local e = adm.timestep_embedding(ad.tensor({ 0, 3.5 }), 5)
  assert(shape_key(e:shape()) == "2,5")
  local f1 = math.exp(-math.log(10000) * 1 / 2)
  T.assert_close(e:select(1, 2), ad.tensor({ math.cos(3.5), math.cos(3.5 * f1), math.sin(3.5), math.sin(3.5 * f1), 0 }),
    { atol = 1e-6, rtol = 1e-6 })
  T.assert_close(e:select(1, 1), ad.tensor({ 1, 1, 0, 0, 0 }))
end)

------------------------------------------------------------------------------ checkpoints and errors

test("from_checkpoint and unwrap_state_dict", function()
  local m = adm.from_checkpoint(FIX .. "/adm_tiny/adm_tiny.pt", TINY_OPTS)
  assert(m.training == false)
  local out = ad.no_grad(function() return m(load("x.npy"), load("t.npy"), load("y.npy")) end)
  check("from_checkpoint output", out, load("output.npy"), 1e-4, 1e-5)
  local legacy = adm.from_checkpoint(FIX .. "/adm_tiny/adm_tiny_legacy.pt", TINY_OPTS)
  T.assert_close(legacy:state_dict()["out.2.weight"], m:state_dict()["out.2.weight"], { atol = 0, rtol = 0 })
  local a, b = ad.zeros(2), ad.ones(3)
  local sd = adm.unwrap_state_dict { model = { ["module.w"] = b }, ema = { ["module.w"] = a, ["module.v"] = b } }
  assert(sd.w == a and sd.v == b)
  sd = adm.unwrap_state_dict({ model = { ["model.w"] = b }, ema = { w = a } }, "model")
  assert(sd.w == b)
  sd = adm.unwrap_state_dict { state_dict = { w = a, ["model.v"] = b } }
  assert(sd.w == a and sd["model.v"] == b, "a prefix is stripped only when every key has it")
  raises("holds no state dict", adm.unwrap_state_dict, { step = 5 })
  raises("give the model options", adm.from_checkpoint, FIX .. "/adm_tiny/adm_tiny.pt")
end)

test("bad options and inputs give clear errors", function()
  raises("unknown option 'num_chanels'", adm.UNetModel, { num_chanels = 32 })
  raises("unsupported image size: 48", adm.UNetModel, { image_size = 48 })
  raises("bad channel_mult '1,x'", adm.UNetModel, with(SMALL, { channel_mult = "1,x" }))
  raises("not divisible by num_head_channels 24", adm.UNetModel, with(SMALL, { num_head_channels = 24 }))
  local m = adm.UNetModel(with(SMALL, { class_cond = true }))
  local x, t = ad.randn(2, 3, 8, 8), ad.tensor({ 1, 2 }, { dtype = "i64" })
  raises("must specify y if and only if the model is class-conditional", function() m(x, t) end)
  raises("y must be a 1-D tensor of 2 class labels", function() m(x, t, ad.tensor({ 1 }, { dtype = "i64" })) end)
  raises("x must have 3 channels", function() m(ad.randn(2, 4, 8, 8), t, ad.tensor({ 1, 2 }, { dtype = "i64" })) end)
  raises("timesteps must be a 1-D tensor of 2 values", function() m(x, ad.tensor({ 1 }, { dtype = "i64" }), t) end)
  raises("x must be a 4-D tensor", function() m(ad.randn(3, 8, 8), t, t) end)
  local u = adm.UNetModel(SMALL)
  raises("must specify y if and only if the model is class-conditional", function() u(x, t, t) end)
end)
