-- test_inception.lua: pytorch-fid's FID InceptionV3: parameter names of
-- pt_inception-2015-12-05-6726825d.pth, and golden 2048-d features from
-- fixtures/inception_fid (written by pytorch-fid, float16 weights upcast).
local ad = require "advdiff"

local fixtures_dir = require("advdiff.testing").fixtures_dir
local FIX = fixtures_dir() .. "/inception_fid/"

local T = require "advdiff.testing"
local read_file, manifest_keys = T.read_file, T.manifest_keys

local function shape_str(shape) return "[" .. table.concat(shape, ", ") .. "]" end

local function errors(got, ref)
  local g, r = got:float(), ref:float()
  assert(shape_str(g:shape()) == shape_str(r:shape()), "shape " .. shape_str(g:shape()) .. " vs " .. shape_str(r:shape()))
  local diff = (g - r):abs():max():item()
  return diff / r:abs():max():item(), (g - r):norm():item() / r:norm():item(), diff
end

-- one model for the whole file: building the 24M-parameter network is not free
local model
local function inception()
  if model == nil then model = ad.models.inception_v3_fid() end
  return model
end

test("inception_v3_fid: pytorch-fid's state_dict names, order and shapes (incl. the 1008-way fc)", function()
  local m = inception()
  local want = manifest_keys(FIX .. "manifest.json")
  assert(#want == 566, "manifest lists " .. #want .. " keys")
  local sd, keys = m:state_dict()
  assert(#keys == #want, #keys .. " keys vs " .. #want)
  for i, e in ipairs(want) do
    assert(keys[i] == e[1], string.format("key %d: %s vs %s", i, keys[i], e[1]))
    assert(shape_str(sd[e[1]]:shape()) == shape_str(e[2]),
      e[1] .. ": " .. shape_str(sd[e[1]]:shape()) .. " vs " .. shape_str(e[2]))
  end
  assert(m:num_parameters() == 23850960)
  assert(m.Mixed_6b.branch7x7_1.bn.eps == 0.001)
  assert(not m.training, "built in eval mode")
end)

test("inception_v3_fid: input checks", function()
  local m = inception()
  local ok, err = pcall(function() return m(ad.rand(2, 1, 32, 32)) end)
  assert(not ok and tostring(err):find("expected images %(N, 3, H, W%)"), tostring(err))
end)

test("golden: 2048-d pool3 features of the float16 checkpoint (strict load)", function()
  assert(ad.load, "ad.load is not available")
  local m = inception()
  local sd = ad.load(FIX .. "pt_inception_fid_random_fp16.pth")
  local missing, unexpected = m:load_state_dict(sd)
  assert(#missing == 0 and #unexpected == 0)
  assert(m.fc.weight:dtype() == "f32")
  m:eval()
  local x = ad.load(FIX .. "input.npy")
  local prepared = m:prepare(x:narrow(1, 1, 1))
  local pr = errors(prepared, ad.load(FIX .. "resized_normalized_0.npy"))
  assert(pr <= 1e-5, string.format("resize + 2x-1: max|diff|/max|ref| %.3g", pr))
  local blocks = ad.no_grad(function() return m:blocks(x) end)
  local feats = blocks[4]:flatten(2)
  assert(shape_str(feats:shape()) == "[4, 2048]")
  local rel, l2 = errors(feats, ad.load(FIX .. "features.npy"))
  if not (rel <= 1e-3 and l2 <= 3e-4) then
    local report = {}
    for i = 1, 4 do
      local br, bl = errors(blocks[i]:mean({ 3, 4 }), ad.load(FIX .. "block" .. (i - 1) .. "_spatial_mean.npy"))
      report[#report + 1] = string.format("block%d spatial mean: rel %.3g l2 %.3g", i - 1, br, bl)
    end
    error(string.format("features: max|diff|/max|ref| %.3g (tol 1e-3), l2_rel %.3g (tol 3e-4); %s",
      rel, l2, table.concat(report, "; ")))
  end
  -- logits for the Inception Score go through the 1008-way fc
  local logits = ad.no_grad(function() return m.fc(feats) end)
  assert(shape_str(logits:shape()) == "[4, 1008]")
end)
