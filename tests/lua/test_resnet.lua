-- test_resnet.lua: torchvision's ResNet-18 (architecture, parameter names,
-- golden outputs and gradients from fixtures/resnet18 written by torchvision)
-- and the paper's discriminator built on it.
local ad = require "advdiff"
local nn = require "advdiff.nn"
local T = require "advdiff.testing"

local fixtures_dir = T.fixtures_dir
local FIX = fixtures_dir() .. "/resnet18/"

local function expect_error(fn, pattern)
  local ok, err = pcall(fn)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  assert(tostring(err):find(pattern), "error '" .. tostring(err) .. "' does not match '" .. pattern .. "'")
end

local read_file, manifest_keys = T.read_file, T.manifest_keys

local function shape_str(shape) return "[" .. table.concat(shape, ", ") .. "]" end

-- the fixtures' criterion: max|got - ref| <= tol * max|ref|
local function check_rel(name, got, ref, tol)
  local g, r = got:float(), ref:float()
  assert(shape_str(g:shape()) == shape_str(r:shape()),
    name .. ": shape " .. shape_str(g:shape()) .. " vs " .. shape_str(r:shape()))
  local diff = (g - r):abs():max():item()
  local scale = r:abs():max():item()
  local l2 = (g - r):norm():item() / r:norm():item()
  assert(diff <= tol * scale, string.format("%s: max|diff| %.4g > %g * max|ref| = %.4g (l2_rel %.3g)",
    name, diff, tol, tol * scale, l2))
end

local ckpt
local function checkpoint()
  if ckpt == nil then
    assert(ad.load, "ad.load is not available")
    ckpt = ad.load(FIX .. "resnet18.pth")
  end
  return ckpt
end
local function npy(name) return ad.load(FIX .. name .. ".npy") end

-- the golden tests share one model (building ResNet-18 is not free); each use
-- reloads the checkpoint, which also resets the BatchNorm statistics
local golden
local function loaded_resnet()
  if golden == nil then golden = ad.models.resnet18 { num_classes = 1000 } end
  golden:load_state_dict(checkpoint())
  golden:zero_grad()
  return golden
end

---------------------------------------------------------------------------- architecture

test("resnet18: torchvision's state_dict names, order and shapes", function()
  local m = ad.models.resnet18()
  local want = manifest_keys(FIX .. "manifest.json")
  assert(#want == 122, "manifest lists " .. #want .. " keys")
  local sd, keys = m:state_dict()
  assert(#keys == #want, #keys .. " keys vs " .. #want)
  for i, e in ipairs(want) do
    assert(keys[i] == e[1], string.format("key %d: %s vs %s", i, keys[i], e[1]))
    assert(shape_str(sd[e[1]]:shape()) == shape_str(e[2]), e[1] .. ": " .. shape_str(sd[e[1]]:shape())
      .. " vs " .. shape_str(e[2]))
  end
  assert(m:num_parameters() == 11689512)
  assert(sd["layer2.0.downsample.1.num_batches_tracked"]:dtype() == "i64")
  local s = tostring(m)
  assert(s:find("(layer2): Sequential(\n    (0): BasicBlock(\n      (conv1): Conv2d(64, 128, kernel_size=(3, 3), "
    .. "stride=(2, 2), padding=(1, 1), bias=False)", 1, true), s)
  assert(s:find("(downsample): Sequential(\n        (0): Conv2d(64, 128, kernel_size=(1, 1), stride=(2, 2), bias=False)",
    1, true), s)
  assert(s:find("(fc): Linear(in_features=512, out_features=1000, bias=True)", 1, true))
end)

test("resnet18: shapes, num_classes, features", function()
  local m = ad.models.resnet18 { num_classes = 10 }
  m:eval()
  local x = ad.randn(2, 3, 32, 32)
  local y = m(x)
  assert(shape_str(y:shape()) == "[2, 10]")
  local f = m:features(x)
  assert(shape_str(f:shape()) == "[2, 512]")
  T.assert_close(m.fc(f), y, { atol = 1e-6, rtol = 1e-5 })
  -- torchvision initialisation: He normal with fan_out for convolutions
  local std = m.layer3[1].conv2.weight:std():item()
  local want = math.sqrt(2 / (256 * 9))
  assert(math.abs(std - want) < 0.05 * want, "conv init std " .. std)
end)

---------------------------------------------------------------------------- goldens

test("golden: the float16 checkpoint loads strictly (upcast to f32)", function()
  local sd = checkpoint()
  local m = loaded_resnet()
  local missing, unexpected = m:load_state_dict(sd)
  assert(#missing == 0 and #unexpected == 0)
  assert(m.conv1.weight:dtype() == "f32")
  T.assert_close(m.conv1.weight, sd["conv1.weight"]:float(), { atol = 0, rtol = 0 })
  T.assert_close(m.layer4[2].bn2.running_var, sd["layer4.1.bn2.running_var"]:float(), { atol = 0, rtol = 0 })
end)

test("golden: eval logits and pooled features", function()
  local m = loaded_resnet():eval()
  local x = npy("input")
  check_rel("logits_eval", m(x), npy("logits_eval"), 1e-4)
  local feats = npy("features_eval")
  check_rel("features_eval", m:features(x), feats, 1e-4)
  local fc = m.fc
  m.fc = nn.Identity()
  check_rel("features_eval (fc = Identity)", m(x), feats, 1e-4)
  m.fc = fc
end)

test("golden: train-mode logits, input and weight gradients, bn1 running stats", function()
  local m = loaded_resnet():train()
  local x = npy("input")
  x.requires_grad = true
  local logits = m(x)
  check_rel("logits_train", logits, npy("logits_train"), 1e-4)
  local loss = (logits * npy("loss_weight")):sum()
  check_rel("loss_train", loss:view(1), npy("loss_train"), 1e-4)
  loss:backward()
  check_rel("grad_input_train", x.grad, npy("grad_input_train"), 1e-3)
  check_rel("grad_conv1_weight_train", m.conv1.weight.grad, npy("grad_conv1_weight_train"), 1e-3)
  check_rel("grad_fc_weight_train", m.fc.weight.grad, npy("grad_fc_weight_train"), 1e-3)
  check_rel("bn1.running_mean", m.bn1.running_mean, npy("bn1_running_mean_after_train"), 1e-5)
  check_rel("bn1.running_var", m.bn1.running_var, npy("bn1_running_var_after_train"), 1e-5)
  assert(m.bn1.num_batches_tracked:item() == checkpoint()["bn1.num_batches_tracked"]:item() + 1)
end)

test("golden: the discriminator's preprocessing feeds the backbone ImageNet-normalised [0,1] images", function()
  local backbone = ad.models.resnet18()
  backbone:load_state_dict(checkpoint())
  local d = ad.models.discriminator { backbone = backbone, num_classes = 1000 }
  d:eval()
  local x = npy("input_01") * 2 - 1
  check_rel("discriminator features", d:features(x), npy("features_eval"), 1e-4)
end)

---------------------------------------------------------------------------- discriminator

test("discriminator: names, head sizes, one logit per image, matches the manual computation", function()
  local d = ad.models.discriminator { num_classes = 10, embed_dim = 128, hidden = 256 }
  local sd, keys = d:state_dict()
  assert(keys[1] == "backbone.conv1.weight")
  assert(sd["backbone.fc.weight"] == nil, "backbone fc is replaced by Identity")
  assert(sd.mean == nil and sd.std == nil, "normalisation constants are not state")
  assert(shape_str(sd["embed.weight"]:shape()) == "[10, 128]")
  assert(shape_str(sd["head.0.weight"]:shape()) == "[256, 640]")
  assert(shape_str(sd["head.2.weight"]:shape()) == "[1, 256]")
  assert(tostring(d.backbone.fc) == "Identity()")
  d:eval()
  local x = ad.rand(3, 3, 32, 32) * 2 - 1
  local y = ad.tensor({ 0, 9, 4 }, { dtype = "i64" })
  local out = d(x, y)
  assert(shape_str(out:shape()) == "[3]")
  local mean = ad.tensor({ 0.485, 0.456, 0.406 }):view(1, 3, 1, 1)
  local std = ad.tensor({ 0.229, 0.224, 0.225 }):view(1, 3, 1, 1)
  local f = d.backbone:features(((x + 1) / 2 - mean) / std)
  local h = ad.relu(ad.linear(ad.cat({ f, d.embed.weight:index_select(1, y) }, 2), d.head[1].weight, d.head[1].bias))
  local ref = ad.linear(h, d.head[3].weight, d.head[3].bias):view(3)
  T.assert_close(out, ref, { atol = 1e-5, rtol = 1e-4 })
  expect_error(function() d(x) end, "class labels y are required")
end)

test("discriminator: unconditional variant when num_classes is nil", function()
  local d = ad.models.discriminator { hidden = 32 }
  assert(d.embed == nil)
  local _, keys = d:state_dict()
  for _, k in ipairs(keys) do assert(not k:find("^embed")) end
  assert(shape_str(d.head[1].weight:shape()) == "[32, 512]")
  d:eval()
  assert(shape_str(d(ad.rand(2, 3, 32, 32)):shape()) == "[2]")
end)

test("discriminator: freeze_backbone freezes parameters and BatchNorm statistics, gradients reach x", function()
  local d = ad.models.discriminator { num_classes = 5, hidden = 16 }
  assert(rawequal(d:freeze_backbone(), d))
  d:train()
  assert(d.training and d.head.training)
  assert(not d.backbone.training and not d.backbone.layer1[1].bn1.training, "frozen backbone stays in eval")
  for name, p in d:named_parameters() do
    assert(p.requires_grad == (name:find("^backbone%.") == nil), name)
  end
  local rm = d.backbone.bn1.running_mean:clone()
  local nbt = d.backbone.bn1.num_batches_tracked:item()
  local x = (ad.rand(2, 3, 32, 32) * 2 - 1)
  x.requires_grad = true
  local y = ad.tensor({ 1, 3 }, { dtype = "i64" })
  local out = d(x, y)
  out:sum():backward()
  T.assert_close(d.backbone.bn1.running_mean, rm, { atol = 0, rtol = 0 })
  assert(d.backbone.bn1.num_batches_tracked:item() == nbt)
  assert(x.grad ~= nil and x.grad:abs():max():item() > 0, "the generator needs d logit / d x")
  assert(d.backbone.conv1.weight.grad == nil)
  assert(d.head[1].weight.grad ~= nil and d.embed.weight.grad ~= nil)
  -- frozen statistics also hold when someone sets the backbone to train() directly
  d.backbone:train()
  d(x:detach(), y)
  T.assert_close(d.backbone.bn1.running_mean, rm, { atol = 0, rtol = 0 })
  d:unfreeze_backbone()
  d:train()
  assert(d.backbone.training and d.backbone.conv1.weight.requires_grad)
  d(x:detach(), y)
  assert(d.backbone.bn1.num_batches_tracked:item() == nbt + 1)
end)
