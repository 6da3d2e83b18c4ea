-- test_nn.lua: the module system (advdiff.nn): registration, traversal order,
-- state_dict names, strict/non-strict loading and its errors, freezing,
-- train/eval, dtype conversion, printing, the layers against closed forms,
-- gradchecks through small modules in f64, and a 20-step training smoke test.
local ad = require "advdiff"
local nn = require "advdiff.nn"
local T = require "advdiff.testing"

local function expect_error(fn, pattern)
  local ok, err = pcall(fn)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  err = tostring(err)
  assert(err:find(pattern), "error '" .. err .. "' does not match '" .. pattern .. "'")
  return err
end

local function maxabs(t) return t:abs():max():item() end

local function same_shape(t, shape)
  local s = t:shape()
  if #s ~= #shape then return false end
  for i = 1, #s do if s[i] ~= shape[i] then return false end end
  return true
end

local function collect(iter)
  local names, vals = {}, {}
  for k, v in iter do names[#names + 1] = k; vals[#vals + 1] = v end
  return names, vals
end

-- a small nested model used by several tests
local Block = nn.Module:extend("Block")
function Block:__init(c)
  self.conv = nn.Conv2d(c, c, 3, { padding = 1, bias = false })
  self.bn = nn.BatchNorm2d(c)
end
function Block:forward(x) return ad.relu(self.bn(self.conv(x))) + x end

local Net = nn.Module:extend("Net")
function Net:__init()
  self.stem = nn.Conv2d(3, 4, 3, { padding = 1 })
  self:register_parameter("scale", ad.ones(4))
  self:register_buffer("offset", ad.zeros(4))
  self.blocks = nn.Sequential(Block(4), Block(4))
  self.head = nn.Linear(4, 2)
end
function Net:forward(x)
  local h = self.stem(x) * self.scale:view(1, 4, 1, 1) + self.offset:view(1, 4, 1, 1)
  h = self.blocks(h)
  return self.head(h:mean({ 3, 4 }))
end

local NET_KEYS = {
  "scale", "offset", "stem.weight", "stem.bias",
  "blocks.0.conv.weight", "blocks.0.bn.weight", "blocks.0.bn.bias", "blocks.0.bn.running_mean",
  "blocks.0.bn.running_var", "blocks.0.bn.num_batches_tracked",
  "blocks.1.conv.weight", "blocks.1.bn.weight", "blocks.1.bn.bias", "blocks.1.bn.running_mean",
  "blocks.1.bn.running_var", "blocks.1.bn.num_batches_tracked",
  "head.weight", "head.bias",
}

---------------------------------------------------------------------------- registration and traversal

test("parameters and named_parameters follow registration order, own first, depth-first", function()
  local m = Net()
  local names, ps = collect(m:named_parameters())
  local expect = { "scale", "stem.weight", "stem.bias", "blocks.0.conv.weight", "blocks.0.bn.weight",
    "blocks.0.bn.bias", "blocks.1.conv.weight", "blocks.1.bn.weight", "blocks.1.bn.bias", "head.weight", "head.bias" }
  assert(#names == #expect, "got " .. table.concat(names, ","))
  for i = 1, #expect do assert(names[i] == expect[i], names[i] .. " ~= " .. expect[i]) end
  local plist = m:parameters()
  assert(#plist == #expect)
  for i = 1, #plist do assert(rawequal(plist[i], ps[i])) end
  for _, p in ipairs(plist) do assert(p.requires_grad, "parameters require grad") end
  assert(rawequal(m:parameters()[2], m.stem.weight))
  local bnames = collect(m:named_buffers())
  assert(table.concat(bnames, ",") == "offset,blocks.0.bn.running_mean,blocks.0.bn.running_var,"
    .. "blocks.0.bn.num_batches_tracked,blocks.1.bn.running_mean,blocks.1.bn.running_var,blocks.1.bn.num_batches_tracked")
  assert(#m:buffers() == 7)
  assert(m:num_parameters() == 4 + (4 * 3 * 9 + 4) + 2 * (4 * 4 * 9 + 8) + (4 * 2 + 2))
end)

test("modules, named_modules, children and apply", function()
  local m = Net()
  local names = collect(m:named_modules())
  assert(table.concat(names, ",") == ",stem,blocks,blocks.0,blocks.0.conv,blocks.0.bn,blocks.1,blocks.1.conv,"
    .. "blocks.1.bn,head", table.concat(names, ","))
  local mods = m:modules()
  assert(#mods == 10 and rawequal(mods[1], m) and rawequal(mods[3], m.blocks))
  local cnames = collect(m:named_children())
  assert(table.concat(cnames, ",") == "stem,blocks,head")
  local n = 0
  for c in m:children() do n = n + 1; assert(nn.is_module(c)) end
  assert(n == 3)
  local order = {}
  m.blocks:apply(function(mod) order[#order + 1] = mod._class_name end)
  assert(table.concat(order, ",") == "Conv2d,BatchNorm2d,Block,Conv2d,BatchNorm2d,Block,Sequential", table.concat(order, ","))
end)

test("tied parameters are listed once; state_dict lists every name", function()
  local M2 = nn.Module:extend("Tied")
  function M2:__init()
    self.a = nn.Linear(3, 3)
    self.b = nn.Linear(3, 3)
    self.b.weight = self.a.weight
  end
  local m = M2()
  assert(#m:parameters() == 3)
  local sd, keys = m:state_dict()
  assert(#keys == 4 and sd["b.weight"] ~= nil)
end)

test("registration errors and replacing/removing children", function()
  local m = nn.Module()
  expect_error(function() m:register_parameter("a.b", ad.zeros(1)) end, "invalid name")
  expect_error(function() m:register_parameter("w", 3) end, "must be a tensor or nil")
  expect_error(function() m:add_module("c", 3) end, "must be a module or nil")
  m:register_parameter("w", ad.zeros(2))
  expect_error(function() m:register_buffer("w", ad.zeros(2)) end, "already registered as a param")
  expect_error(function() m:add_module("train", nn.ReLU()) end, "would hide the Module method")
  local net = Net()
  net.head = nn.Identity()
  local _, keys = net:state_dict()
  assert(keys[#keys] == "blocks.1.bn.num_batches_tracked", "replaced child has no parameters")
  net.stem.bias = nil
  local sd = net:state_dict()
  assert(sd["stem.bias"] == nil and sd["stem.weight"] ~= nil)
  expect_error(function() nn.Module():forward() end, "forward is not implemented")
  local src = ad.randn(3, { requires_grad = true })
  local p = nn.Module():register_parameter("p", src * 2)
  assert(p.is_leaf and p.requires_grad, "a computed tensor is registered as a leaf")
end)

---------------------------------------------------------------------------- state_dict

test("state_dict names, order, dtypes; tensors share storage", function()
  local m = Net()
  local sd, keys = m:state_dict()
  assert(#keys == #NET_KEYS, table.concat(keys, ","))
  for i = 1, #NET_KEYS do assert(keys[i] == NET_KEYS[i], keys[i] .. " ~= " .. NET_KEYS[i]) end
  local n = 0
  for _ in pairs(sd) do n = n + 1 end
  assert(n == #NET_KEYS)
  local nbt = sd["blocks.0.bn.num_batches_tracked"]
  assert(nbt:dtype() == "i64" and nbt:dim() == 0 and nbt:item() == 0)
  assert(not sd["head.weight"].requires_grad, "state_dict tensors are detached")
  sd["head.weight"]:fill_(0.5)
  assert(m.head.weight:sum():item() == 0.5 * 8, "state_dict shares storage with the parameters")
end)

test("load_state_dict round trip reproduces the outputs; copies into existing tensors", function()
  local a, b = Net(), Net()
  a:eval(); b:eval()
  local x = ad.randn(2, 3, 5, 5)
  local w_before = b.head.weight
  local missing, unexpected = b:load_state_dict(a:state_dict())
  assert(#missing == 0 and #unexpected == 0)
  assert(rawequal(b.head.weight, w_before), "loading keeps the parameter objects")
  T.assert_close(b(x), a(x), { atol = 0, rtol = 0 })
end)

test("strict loading: missing and unexpected keys are errors that list them", function()
  local m = Net()
  local sd = m:state_dict()
  sd["head.bias"] = nil
  sd["blocks.1.conv.weight"] = nil
  local err = expect_error(function() m:load_state_dict(sd) end, "missing keys")
  assert(err:find('"head.bias"', 1, true) and err:find('"blocks.1.conv.weight"', 1, true), err)
  local sd2 = m:state_dict()
  sd2["extra.weight"] = ad.zeros(3)
  err = expect_error(function() m:load_state_dict(sd2) end, "unexpected keys")
  assert(err:find('"extra.weight"', 1, true), err)
  assert(err:find("Net", 1, true), "names the module class")
end)

test("non-strict loading returns missing and unexpected keys and loads the rest", function()
  local a, b = Net(), Net()
  local sd = a:state_dict()
  sd["head.bias"] = nil
  sd["bogus"] = ad.zeros(1)
  local bias_before = b.head.bias:clone()
  local missing, unexpected = b:load_state_dict(sd, { strict = false })
  assert(#missing == 1 and missing[1] == "head.bias")
  assert(#unexpected == 1 and unexpected[1] == "bogus")
  T.assert_close(b.head.weight, a.head.weight, { atol = 0, rtol = 0 })
  T.assert_close(b.head.bias, bias_before, { atol = 0, rtol = 0 })
end)

test("a shape mismatch is always an error naming the key and both shapes; nothing is copied", function()
  local m = Net()
  local sd = Net():state_dict()
  sd["head.weight"] = ad.zeros(3, 4)
  local before = m.stem.weight:clone()
  for _, strict in ipairs { true, false } do
    local err = expect_error(function() m:load_state_dict(sd, { strict = strict }) end, "size mismatch for head.weight")
    assert(err:find("[3, 4]", 1, true) and err:find("[2, 4]", 1, true), err)
  end
  T.assert_close(m.stem.weight, before, { atol = 0, rtol = 0 })
  local sd2 = m:state_dict()
  sd2["stem.bias"] = "not a tensor"
  expect_error(function() m:load_state_dict(sd2) end, "stem.bias: expected a tensor")
  expect_error(function() m:load_state_dict(nil) end, "expected a table")
end)

test("loading converts dtypes into the parameters' dtype (f64 and f16 checkpoints into f32)", function()
  local a, b = Net(), Net()
  local sd = a:state_dict()
  local sd64, sd16 = {}, {}
  for k, v in pairs(sd) do
    local float = v:dtype() == "f32"
    sd64[k] = float and v:to("f64") or v
    sd16[k] = float and v:to("f16") or v
  end
  b:load_state_dict(sd64)
  assert(b.head.weight:dtype() == "f32")
  T.assert_close(b.head.weight, a.head.weight, { atol = 0, rtol = 0 })
  b:load_state_dict(sd16)
  assert(b.stem.weight:dtype() == "f32")
  T.assert_close(b.stem.weight, a.stem.weight, { atol = 1e-3, rtol = 1e-3 })
  T.assert_close(b.stem.weight, sd16["stem.weight"]:float(), { atol = 0, rtol = 0 })
end)

test("a checkpoint without num_batches_tracked loads (older PyTorch files)", function()
  local m = Net()
  local sd = Net():state_dict()
  sd["blocks.0.bn.num_batches_tracked"] = nil
  sd["blocks.1.bn.num_batches_tracked"] = nil
  local missing = m:load_state_dict(sd)
  assert(#missing == 0)
end)

test("non-persistent buffers stay out of state_dict", function()
  local M2 = nn.Module:extend("NP")
  function M2:__init()
    self:register_buffer("keep", ad.zeros(2))
    self:register_buffer("tmp", ad.zeros(2), { persistent = false })
  end
  local m = M2()
  local sd, keys = m:state_dict()
  assert(#keys == 1 and keys[1] == "keep" and sd.tmp == nil)
  assert(#m:buffers() == 2)
  m:to("f64")
  assert(m.tmp:dtype() == "f64", "to() converts non-persistent buffers")
end)

---------------------------------------------------------------------------- modes, freezing, conversion

test("train/eval propagate recursively and return the module", function()
  local m = Net()
  assert(m.training and m.blocks[1].bn.training)
  assert(rawequal(m:eval(), m))
  for _, mod in ipairs(m:modules()) do assert(mod.training == false) end
  m:train()
  for _, mod in ipairs(m:modules()) do assert(mod.training == true) end
  m:train(false)
  assert(m.blocks[2].conv.training == false)
end)

test("freeze/unfreeze by Lua pattern; num_parameters(trainable_only)", function()
  local m = Net()
  local total = m:num_parameters()
  m:freeze("^blocks%.")
  for name, p in m:named_parameters() do
    assert(p.requires_grad == (name:find("^blocks%.") == nil), name)
  end
  assert(m:num_parameters(true) == total - 2 * (4 * 4 * 9 + 8))
  assert(#m:parameters(true) == 5)
  m:unfreeze("bn%.weight$")
  assert(m.blocks[1].bn.weight.requires_grad and not m.blocks[1].bn.bias.requires_grad)
  m:freeze()
  assert(m:num_parameters(true) == 0)
  m:unfreeze()
  assert(m:num_parameters(true) == total)
  expect_error(function() m:freeze(3) end, "pattern")
end)

test("frozen parameters get no gradient; zero_grad clears gradients", function()
  local m = Net()
  m:freeze("^stem%.")
  local loss = m(ad.randn(2, 3, 5, 5)):sum()
  loss:backward()
  assert(m.stem.weight.grad == nil)
  assert(m.head.weight.grad ~= nil and m.blocks[1].conv.weight.grad ~= nil)
  m:zero_grad()
  for _, p in ipairs(m:parameters()) do assert(p.grad == nil) end
end)

test("to(dtype) converts floating tensors, keeps requires_grad, leaves i64 buffers", function()
  local m = Net()
  m:freeze("^head%.")
  local x = ad.randn(2, 3, 5, 5)
  m:eval()
  local y32 = m(x)
  assert(rawequal(m:to("f64"), m))
  for name, p in m:named_parameters() do
    assert(p:dtype() == "f64", name)
    assert(p.is_leaf, name)
    assert(p.requires_grad == (name:find("^head%.") == nil), name)
  end
  assert(m.blocks[1].bn.running_mean:dtype() == "f64")
  assert(m.blocks[1].bn.num_batches_tracked:dtype() == "i64")
  local y64 = m(x:double())
  assert(y64:dtype() == "f64")
  T.assert_close(y64:float(), y32, { atol = 1e-5, rtol = 1e-4 })
  m:to("float32")
  assert(m.stem.weight:dtype() == "f32")
  local w = m.stem.weight
  m:to("f32"); m:to("cpu")
  assert(rawequal(m.stem.weight, w), "to() without a conversion keeps the parameter objects")
  expect_error(function() m:to("i64") end, "floating%-point dtypes")
  expect_error(function() m:to(3) end, "expected a dtype name")
end)

---------------------------------------------------------------------------- printing

test("tostring prints a PyTorch-style tree", function()
  local s = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, { bias = false }), nn.BatchNorm2d(8), nn.ReLU(),
    nn.MaxPool2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(8, 2))
  local expect = table.concat({
    "Sequential(",
    "  (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)",
    "  (1): BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)",
    "  (2): ReLU()",
    "  (3): MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)",
    "  (4): AdaptiveAvgPool2d(output_size=(1, 1))",
    "  (5): Flatten(start_dim=2, end_dim=-1)",
    "  (6): Dropout(p=0.1, inplace=False)",
    "  (7): Linear(in_features=8, out_features=2, bias=True)",
    ")" }, "\n")
  assert(tostring(s) == expect, "\n" .. tostring(s))
  local n = tostring(Net())
  assert(n:find("^Net%(\n  %(stem%): Conv2d%(3, 4, kernel_size=%(3, 3%)"), n)
  assert(n:find("\n  (blocks): Sequential(\n    (0): Block(\n      (conv): Conv2d(", 1, true), n)
  assert(tostring(nn.GroupNorm(2, 4)) == "GroupNorm(2, 4, eps=1e-05, affine=True)")
  assert(tostring(nn.LayerNorm(6)) == "LayerNorm((6,), eps=1e-05, elementwise_affine=True)")
  assert(tostring(nn.Embedding(10, 3)) == "Embedding(10, 3)")
  assert(tostring(nn.Conv1d(4, 12, 1)) == "Conv1d(4, 12, kernel_size=(1,), stride=(1,))")
  assert(tostring(nn.Upsample { scale_factor = 2 }) == "Upsample(scale_factor=2.0, mode='nearest')")
  assert(tostring(nn.AvgPool2d(3, 1, 1, { count_include_pad = false }))
    == "AvgPool2d(kernel_size=3, stride=1, padding=1, count_include_pad=False)")
  assert(tostring(nn.Identity()) == "Identity()")
  assert(tostring(nn.Linear) == "<class Linear>")
end)

---------------------------------------------------------------------------- containers

test("Sequential: 1-based indexing of children named 0, 1, ...; #, ipairs, append, assignment", function()
  local a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
  local s = nn.Sequential { a, b }
  assert(#s == 2 and rawequal(s[1], a) and rawequal(s[2], b) and rawequal(s[-1], b) and s[3] == nil)
  assert(rawequal(s["0"], a))
  s:append(c)
  local n = 0
  for i, m in ipairs(s) do n = n + 1; assert(rawequal(m, ({ a, b, c })[i])) end
  assert(n == 3)
  local _, keys = s:state_dict()
  assert(table.concat(keys, ",") == "0.weight,0.bias,2.weight,2.bias")
  local x = ad.randn(4, 2)
  T.assert_close(s(x), c(ad.relu(a(x))), { atol = 0, rtol = 0 })
  local d = nn.Linear(3, 1)
  s[3] = d
  assert(rawequal(s[3], d) and rawequal(s["2"], d))
  expect_error(function() nn.Sequential(nn.ReLU(), 3) end, "element 2 is not a module")
end)

test("containers can be subclassed (ADM's TimestepEmbedSequential pattern)", function()
  local TES = nn.Sequential:extend("TimestepEmbedSequential")
  local Scale = nn.Module:extend("Scale")
  function Scale:forward(x, emb) return x * emb end
  function TES:forward(x, emb)
    for _, layer in ipairs(self) do
      if getmetatable(layer) == Scale then x = layer(x, emb) else x = layer(x) end
    end
    return x
  end
  local t = TES(nn.Linear(3, 3), Scale(), nn.ReLU())
  assert(#t == 3 and getmetatable(t[2]) == Scale)
  local _, keys = t:state_dict()
  assert(table.concat(keys, ",") == "0.weight,0.bias")
  local x, emb = ad.randn(2, 3), ad.randn(2, 3)
  T.assert_close(t(x, emb), ad.relu(t[1](x) * emb), { atol = 0, rtol = 0 })
  assert(tostring(t):find("^TimestepEmbedSequential%(\n  %(0%): Linear"))
end)

test("ModuleList and ModuleDict", function()
  local ml = nn.ModuleList { nn.Linear(2, 2), nn.Linear(2, 2) }
  ml:append(nn.Linear(2, 1))
  assert(#ml == 3)
  local _, keys = ml:state_dict()
  assert(keys[5] == "2.weight")
  expect_error(function() ml(ad.zeros(1, 2)) end, "ModuleList has no forward")
  local md = nn.ModuleDict { { "q", nn.Linear(2, 2) }, { "k", nn.Linear(2, 3) } }
  local _, mkeys = md:state_dict()
  assert(table.concat(mkeys, ",") == "q.weight,q.bias,k.weight,k.bias")
  assert(table.concat(md:keys(), ",") == "q,k")
  assert(md:get("k").out_features == 3 and md.q.out_features == 2)
  local md2 = nn.ModuleDict { zeta = nn.ReLU(), alpha = nn.Linear(1, 1) }
  assert(table.concat(md2:keys(), ",") == "alpha,zeta")
end)

---------------------------------------------------------------------------- layers

test("Linear: closed form, no bias, default init bounds", function()
  local l = nn.Linear(7, 5)
  local bound = 1 / math.sqrt(7)
  assert(maxabs(l.weight) <= bound and maxabs(l.bias) <= bound)
  assert(maxabs(l.weight) > 0.5 * bound, "kaiming_uniform(a=sqrt(5)) fills U(-1/sqrt(fan_in), 1/sqrt(fan_in))")
  local x = ad.randn(3, 7)
  T.assert_close(l(x), ad.matmul(x, l.weight:t()) + l.bias, { atol = 1e-6, rtol = 1e-5 })
  local nb = nn.Linear(7, 5, { bias = false })
  assert(nb.bias == nil and #nb:parameters() == 1)
  expect_error(function() nn.Linear(0, 3) end, "in_features must be a positive integer")
end)

test("Conv2d/Conv1d: positional stride/padding, options, weight shapes, forward", function()
  local c = nn.Conv2d(4, 6, { 3, 1 }, 2, { 1, 0 }, { groups = 2 })
  assert(same_shape(c.weight, { 6, 2, 3, 1 }))
  local x = ad.randn(2, 4, 7, 5)
  local y = c(x)
  assert(same_shape(y, { 2, 6, 4, 3 }), table.concat(y:shape(), ","))
  T.assert_close(y, ad.conv2d(x, c.weight, c.bias, { stride = 2, padding = { 1, 0 }, groups = 2 }), { atol = 0, rtol = 0 })
  local bound = 1 / math.sqrt(2 * 3)
  assert(maxabs(c.weight) <= bound and maxabs(c.bias) <= bound)
  local c1 = nn.Conv1d(4, 12, 1)
  assert(same_shape(c1.weight, { 12, 4, 1 }))
  local x1 = ad.randn(2, 4, 9)
  T.assert_close(c1(x1), ad.conv1d(x1, c1.weight, c1.bias), { atol = 0, rtol = 0 })
  local cs = nn.Conv2d(4, 2, 3, { padding = "same" })
  assert(tostring(cs) == "Conv2d(4, 2, kernel_size=(3, 3), stride=(1, 1), padding=same)")
  assert(same_shape(cs(x), { 2, 2, 7, 5 }))
  local c1s = nn.Conv1d(4, 2, 3, { padding = "same" })
  assert(same_shape(c1s(x1), { 2, 2, 9 }))
  expect_error(function() nn.Conv2d(3, 4, 3, { groups = 2 }) end, "groups")
  expect_error(function() nn.Conv2d(3, 4, { 3, 3, 3 }) end, "kernel_size must be")
end)

test("Embedding looks up 0-based rows; init N(0,1)", function()
  local e = nn.Embedding(10, 4)
  local idx = ad.tensor({ 0, 9, 3 }, { dtype = "i64" })
  local y = e(idx)
  assert(same_shape(y, { 3, 4 }))
  T.assert_close(y[2], e.weight[10], { atol = 0, rtol = 0 })
  local big = nn.Embedding(1000, 50)
  local std = big.weight:std():item()
  assert(math.abs(std - 1) < 0.05, "std " .. std)
end)

test("Dropout follows module.training", function()
  local d = nn.Dropout(0.5)
  local x = ad.ones(1000)
  local y = d(x)
  local zeros = (y:eq(0)):sum():item()
  assert(zeros > 350 and zeros < 650, "zeros " .. zeros)
  T.assert_close(y:max(), ad.tensor(2.0), { atol = 1e-6, rtol = 0 })
  d:eval()
  T.assert_close(d(x), x, { atol = 0, rtol = 0 })
end)

test("GroupNorm: closed form; f16 input computed in f32 and cast back", function()
  local g = nn.GroupNorm(2, 6, { eps = 1e-5 })
  ad.no_grad(function()
    g.weight:copy_(ad.randn(6)); g.bias:copy_(ad.randn(6))
  end)
  local x = ad.randn(3, 6, 4, 5)
  local xr = x:view(3, 2, 3 * 20)
  local mu = xr:mean(3, { keepdim = true })
  local var = xr:var(3, { keepdim = true, correction = 0 })
  local ref = ((xr - mu) / (var + 1e-5):sqrt()):view(3, 6, 4, 5) * g.weight:view(1, 6, 1, 1) + g.bias:view(1, 6, 1, 1)
  T.assert_close(g(x), ref, { atol = 1e-5, rtol = 1e-4 })
  local y16 = g(x:half())
  assert(y16:dtype() == "f16")
  T.assert_close(y16:float(), ref, { atol = 2e-2, rtol = 1e-2 })
end)

test("BatchNorm2d: train updates running stats (unbiased var), eval uses them, freeze_stats", function()
  local bn = nn.BatchNorm2d(3, { momentum = 0.1 })
  local x = ad.randn(4, 3, 5, 5) * 2 + 1
  local xc = x:permute(2, 1, 3, 4):reshape(3, -1)
  local bmean, bvar_u = xc:mean(2), xc:var(2, { correction = 1 })
  local bvar_b = xc:var(2, { correction = 0 })
  local y = bn(x)
  T.assert_close(bn.running_mean, bmean * 0.1, { atol = 1e-5, rtol = 1e-4 })
  T.assert_close(bn.running_var, bvar_u * 0.1 + 0.9, { atol = 1e-5, rtol = 1e-4 })
  assert(bn.num_batches_tracked:item() == 1)
  T.assert_close(y, (x - bmean:view(1, 3, 1, 1)) / (bvar_b:view(1, 3, 1, 1) + 1e-5):sqrt(), { atol = 1e-5, rtol = 1e-4 })
  bn(x)
  assert(bn.num_batches_tracked:item() == 2)
  bn:eval()
  local rm, rv = bn.running_mean:clone(), bn.running_var:clone()
  local ye = bn(x)
  T.assert_close(ye, (x - rm:view(1, 3, 1, 1)) / (rv:view(1, 3, 1, 1) + 1e-5):sqrt(), { atol = 1e-5, rtol = 1e-4 })
  assert(bn.num_batches_tracked:item() == 2)
  bn:train()
  bn.freeze_stats = true
  T.assert_close(bn(x), ye, { atol = 0, rtol = 0 })
  T.assert_close(bn.running_mean, rm, { atol = 0, rtol = 0 })
  assert(bn.num_batches_tracked:item() == 2)
  expect_error(function() bn(ad.randn(2, 3)) end, "expected 4%-D input")
end)

test("BatchNorm2d: cumulative average (momentum=false) and no running stats", function()
  local bn = nn.BatchNorm2d(2, { momentum = false })
  local x1, x2 = ad.randn(3, 2, 4, 4), ad.randn(3, 2, 4, 4) + 3
  bn(x1); bn(x2)
  local m1 = x1:mean({ 1, 3, 4 })
  local m2 = x2:mean({ 1, 3, 4 })
  T.assert_close(bn.running_mean, (m1 + m2) * 0.5, { atol = 1e-5, rtol = 1e-4 })
  local nt = nn.BatchNorm2d(2, { track_running_stats = false, affine = false })
  assert(#nt:buffers() == 0 and #nt:parameters() == 0)
  nt:eval()
  local y = nt(x2)
  T.assert_close(y:mean({ 1, 3, 4 }), ad.zeros(2), { atol = 1e-5, rtol = 0 })
end)

test("LayerNorm: closed form over the last dims", function()
  local ln = nn.LayerNorm({ 4, 5 })
  local x = ad.randn(3, 4, 5)
  local xr = x:view(3, 20)
  local ref = ((xr - xr:mean(2, { keepdim = true })) / (xr:var(2, { keepdim = true, correction = 0 }) + 1e-5):sqrt())
  T.assert_close(ln(x), ref:view(3, 4, 5), { atol = 1e-5, rtol = 1e-4 })
end)

test("activations, pools, Upsample, Flatten match the functional ops", function()
  local x = ad.randn(2, 3, 6, 6)
  T.assert_close(nn.ReLU()(x), ad.relu(x), { atol = 0, rtol = 0 })
  T.assert_close(nn.SiLU()(x), ad.silu(x), { atol = 0, rtol = 0 })
  T.assert_close(nn.GELU()(x), ad.gelu(x), { atol = 0, rtol = 0 })
  T.assert_close(nn.Tanh()(x), ad.tanh(x), { atol = 0, rtol = 0 })
  T.assert_close(nn.Sigmoid()(x), ad.sigmoid(x), { atol = 0, rtol = 0 })
  T.assert_close(nn.Identity()(x), x, { atol = 0, rtol = 0 })
  expect_error(function() nn.GELU { approximate = "tanh" } end, "only approximate='none'")
  assert(same_shape(nn.MaxPool2d(3, 2, 1)(x), { 2, 3, 3, 3 }))
  T.assert_close(nn.AvgPool2d(2)(x), ad.avg_pool2d(x, 2), { atol = 0, rtol = 0 })
  T.assert_close(nn.AdaptiveAvgPool2d(1)(x):view(2, 3), x:mean({ 3, 4 }), { atol = 1e-6, rtol = 1e-5 })
  local up = nn.Upsample { scale_factor = 2, mode = "nearest" }(x)
  assert(same_shape(up, { 2, 3, 12, 12 }))
  T.assert_close(up:narrow(3, 1, 1):narrow(4, 1, 1), x:narrow(3, 1, 1):narrow(4, 1, 1), { atol = 0, rtol = 0 })
  local ub = nn.Upsample { size = { 9, 9 }, mode = "bilinear", align_corners = false }(x)
  assert(same_shape(ub, { 2, 3, 9, 9 }))
  assert(same_shape(nn.Flatten()(x), { 2, 108 }))
  expect_error(function() nn.Upsample { mode = "nearest" } end, "exactly one of size and scale_factor")
end)

---------------------------------------------------------------------------- initialisers

test("nn.init: fans, gains and bounds", function()
  local init = nn.init
  local w = ad.empty(16, 8, 3, 3)
  local fi, fo = init.fan_in_and_fan_out(w)
  assert(fi == 72 and fo == 144)
  init.kaiming_uniform_(w, { a = 0, nonlinearity = "relu" })
  local b = math.sqrt(2) * math.sqrt(3 / 72)
  assert(maxabs(w) <= b and maxabs(w) > 0.9 * b)
  init.kaiming_normal_(w, { mode = "fan_out", nonlinearity = "relu" })
  local std = w:std():item()
  assert(math.abs(std - math.sqrt(2 / 144)) < 0.15 * math.sqrt(2 / 144), "std " .. std)
  init.xavier_uniform_(w)
  assert(maxabs(w) <= math.sqrt(6 / (72 + 144)))
  init.constant_(w, 0.25)
  T.assert_close(w, ad.full({ 16, 8, 3, 3 }, 0.25), { atol = 0, rtol = 0 })
  init.zeros_(w); assert(maxabs(w) == 0)
  init.ones_(w); assert(w:min():item() == 1)
  init.normal_(w, 3, 0.5)
  assert(math.abs(w:mean():item() - 3) < 0.1)
  init.uniform_(w, -2, -1)
  assert(w:max():item() <= -1 and w:min():item() >= -2)
  assert(math.abs(init.calculate_gain("leaky_relu", math.sqrt(5)) - math.sqrt(1 / 3)) < 1e-12)
  assert(init.calculate_gain("tanh") == 5 / 3)
  expect_error(function() init.fan_in_and_fan_out(ad.empty(3)) end, "at least 2 dimensions")
  local g1 = ad.Generator(7)
  local g2 = ad.Generator(7)
  local a1, a2 = ad.empty(5, 5), ad.empty(5, 5)
  init.normal_(a1, 0, 1, { generator = g1 })
  init.normal_(a2, 0, 1, { generator = g2 })
  T.assert_close(a1, a2, { atol = 0, rtol = 0 })
end)

---------------------------------------------------------------------------- gradchecks (f64)

local function params_f64(m)
  m:to("f64")
  return m:parameters()
end

test("gradcheck: Linear", function()
  local m = nn.Linear(5, 3)
  local ps = params_f64(m)
  local x = ad.randn(4, 5, { dtype = "f64", requires_grad = true })
  T.gradcheck(function(xx) return m(xx) end, { x, ps[1], ps[2] })
end)

test("gradcheck: Conv2d (stride 2, padding, groups)", function()
  local m = nn.Conv2d(4, 6, 3, 2, 1, { groups = 2 })
  local ps = params_f64(m)
  local x = ad.randn(2, 4, 5, 7, { dtype = "f64", requires_grad = true })
  T.gradcheck(function(xx) return m(xx) end, { x, ps[1], ps[2] })
end)

test("gradcheck: GroupNorm", function()
  local m = nn.GroupNorm(2, 6)
  local ps = params_f64(m)
  ad.no_grad(function() ps[1]:copy_(ad.randn(6, { dtype = "f64" })) end)
  local x = ad.randn(2, 6, 3, 5, { dtype = "f64", requires_grad = true })
  T.gradcheck(function(xx) return m(xx) end, { x, ps[1], ps[2] })
end)

test("gradcheck: BatchNorm2d in training (batch statistics) and eval mode", function()
  local m = nn.BatchNorm2d(3)
  local ps = params_f64(m)
  ad.no_grad(function() ps[1]:copy_(ad.randn(3, { dtype = "f64" })) end)
  local x = ad.randn(4, 3, 3, 2, { dtype = "f64", requires_grad = true })
  T.gradcheck(function(xx) return m(xx) end, { x, ps[1], ps[2] })
  m:eval()
  T.gradcheck(function(xx) return m(xx) end, { x, ps[1], ps[2] })
end)

test("gradcheck: LayerNorm and Embedding", function()
  local ln = nn.LayerNorm(5)
  local ps = params_f64(ln)
  local x = ad.randn(3, 5, { dtype = "f64", requires_grad = true })
  T.gradcheck(function(xx) return ln(xx) end, { x, ps[1], ps[2] })
  local e = nn.Embedding(6, 3)
  local ew = params_f64(e)[1]
  local idx = ad.tensor({ 1, 5, 1, 0 }, { dtype = "i64" })
  T.gradcheck(function() return e(idx) end, { ew })
end)

---------------------------------------------------------------------------- training smoke test

test("a small CNN trains: loss goes down over 20 SGD steps", function()
  ad.manual_seed(0)
  local model = nn.Sequential(
    nn.Conv2d(1, 8, 3, { padding = 1 }), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(8, 8, 3, { padding = 1 }), nn.GroupNorm(2, 8), nn.SiLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
  -- two classes: a bright blob in the top-left or the bottom-right quadrant
  local n = 16
  local x = ad.randn(n, 1, 8, 8) * 0.3
  local labels = {}
  for i = 1, n do
    local c = (i - 1) % 2
    labels[i] = c
    local q = x[i][1]:narrow(1, c * 4 + 1, 4):narrow(2, c * 4 + 1, 4)
    q:copy_(q + 1.5)
  end
  local y = ad.tensor(labels, { dtype = "i64" })
  local params = model:parameters()
  local losses = {}
  for step = 1, 20 do
    model:zero_grad()
    local loss = ad.cross_entropy(model(x), y)
    loss:backward()
    losses[step] = loss:item()
    ad.no_grad(function()
      for _, p in ipairs(params) do p:copy_(p - p.grad * 0.1) end
    end)
  end
  local first = (losses[1] + losses[2]) / 2
  local last = (losses[19] + losses[20]) / 2
  assert(last < 0.7 * first, string.format("loss %.4f -> %.4f", first, last))
  assert(model[2].num_batches_tracked:item() == 20)
end)
