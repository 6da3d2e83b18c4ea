--- advdiff.models.inception: pytorch-fid's FID InceptionV3, the port of the
-- 2015 TensorFlow Inception graph used for FID: torchvision's Inception3 with
-- the FIDInceptionA/C/E_1/E_2 blocks (their average-pool branches exclude the
-- padding from the count, and the last block max-pools). Parameter names are
-- those of pytorch-fid's pt_inception-2015-12-05-6726825d.pth, including the
-- unused 1008-way fc, so that file loads with strict=true.
--
-- forward(x) = features(x): x (N, 3, H, W) in [0, 1] -> (N, 2048) pool3 features
-- logits(x): (N, 1008) through fc (for the Inception Score)
-- blocks(x): the outputs of pytorch-fid's four blocks, for debugging
local core = require "advdiff.core"
local nn = require "advdiff.nn"

local M = {}

local function avg_pool_nopad(x)
  return core.avg_pool2d(x, 3, { stride = 1, padding = 1, count_include_pad = false })
end
local function max_pool(x, k, stride, padding)
  return (core.max_pool2d(x, k, { stride = stride, padding = padding or 0 }))
end
local function cat(list) return core.cat(list, 2) end

--- conv (no bias) -> BatchNorm(eps=0.001) -> ReLU
local BasicConv2d = nn.Module:extend("BasicConv2d")
M.BasicConv2d = BasicConv2d

function BasicConv2d:__init(cin, cout, k, opts)
  opts = opts or {}
  self.conv = nn.Conv2d(cin, cout, k, { stride = opts.stride or 1, padding = opts.padding or 0, bias = false })
  self.bn = nn.BatchNorm2d(cout, { eps = 0.001 })
end

function BasicConv2d:forward(x) return core.relu(self.bn(self.conv(x))) end

local function B(cin, cout, k, opts) return BasicConv2d(cin, cout, k, opts) end

-- Mixed_5b/c/d
local InceptionA = nn.Module:extend("FIDInceptionA")
function InceptionA:__init(cin, pool_features)
  self.branch1x1 = B(cin, 64, 1)
  self.branch5x5_1 = B(cin, 48, 1)
  self.branch5x5_2 = B(48, 64, 5, { padding = 2 })
  self.branch3x3dbl_1 = B(cin, 64, 1)
  self.branch3x3dbl_2 = B(64, 96, 3, { padding = 1 })
  self.branch3x3dbl_3 = B(96, 96, 3, { padding = 1 })
  self.branch_pool = B(cin, pool_features, 1)
end
function InceptionA:forward(x)
  local b1 = self.branch1x1(x)
  local b5 = self.branch5x5_2(self.branch5x5_1(x))
  local b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
  local bp = self.branch_pool(avg_pool_nopad(x))
  return cat { b1, b5, b3, bp }
end

-- Mixed_6a (torchvision's InceptionB)
local InceptionB = nn.Module:extend("InceptionB")
function InceptionB:__init(cin)
  self.branch3x3 = B(cin, 384, 3, { stride = 2 })
  self.branch3x3dbl_1 = B(cin, 64, 1)
  self.branch3x3dbl_2 = B(64, 96, 3, { padding = 1 })
  self.branch3x3dbl_3 = B(96, 96, 3, { stride = 2 })
end
function InceptionB:forward(x)
  local b3 = self.branch3x3(x)
  local bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
  return cat { b3, bd, max_pool(x, 3, 2) }
end

-- Mixed_6b..6e
local InceptionC = nn.Module:extend("FIDInceptionC")
function InceptionC:__init(cin, c7)
  self.branch1x1 = B(cin, 192, 1)
  self.branch7x7_1 = B(cin, c7, 1)
  self.branch7x7_2 = B(c7, c7, { 1, 7 }, { padding = { 0, 3 } })
  self.branch7x7_3 = B(c7, 192, { 7, 1 }, { padding = { 3, 0 } })
  self.branch7x7dbl_1 = B(cin, c7, 1)
  self.branch7x7dbl_2 = B(c7, c7, { 7, 1 }, { padding = { 3, 0 } })
  self.branch7x7dbl_3 = B(c7, c7, { 1, 7 }, { padding = { 0, 3 } })
  self.branch7x7dbl_4 = B(c7, c7, { 7, 1 }, { padding = { 3, 0 } })
  self.branch7x7dbl_5 = B(c7, 192, { 1, 7 }, { padding = { 0, 3 } })
  self.branch_pool = B(cin, 192, 1)
end
function InceptionC:forward(x)
  local b1 = self.branch1x1(x)
  local b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
  local bd = self.branch7x7dbl_1(x)
  bd = self.branch7x7dbl_3(self.branch7x7dbl_2(bd))
  bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
  local bp = self.branch_pool(avg_pool_nopad(x))
  return cat { b1, b7, bd, bp }
end

-- Mixed_7a (torchvision's InceptionD)
local InceptionD = nn.Module:extend("InceptionD")
function InceptionD:__init(cin)
  self.branch3x3_1 = B(cin, 192, 1)
  self.branch3x3_2 = B(192, 320, 3, { stride = 2 })
  self.branch7x7x3_1 = B(cin, 192, 1)
  self.branch7x7x3_2 = B(192, 192, { 1, 7 }, { padding = { 0, 3 } })
  self.branch7x7x3_3 = B(192, 192, { 7, 1 }, { padding = { 3, 0 } })
  self.branch7x7x3_4 = B(192, 192, 3, { stride = 2 })
end
function InceptionD:forward(x)
  local b3 = self.branch3x3_2(self.branch3x3_1(x))
  local b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
  return cat { b3, b7, max_pool(x, 3, 2) }
end

-- Mixed_7b (E_1: average pool without padding in the count) and Mixed_7c (E_2: max pool)
local InceptionE = nn.Module:extend("FIDInceptionE")
function InceptionE:__init(cin, pool)
  self.pool = pool
  self.branch1x1 = B(cin, 320, 1)
  self.branch3x3_1 = B(cin, 384, 1)
  self.branch3x3_2a = B(384, 384, { 1, 3 }, { padding = { 0, 1 } })
  self.branch3x3_2b = B(384, 384, { 3, 1 }, { padding = { 1, 0 } })
  self.branch3x3dbl_1 = B(cin, 448, 1)
  self.branch3x3dbl_2 = B(448, 384, 3, { padding = 1 })
  self.branch3x3dbl_3a = B(384, 384, { 1, 3 }, { padding = { 0, 1 } })
  self.branch3x3dbl_3b = B(384, 384, { 3, 1 }, { padding = { 1, 0 } })
  self.branch_pool = B(cin, 192, 1)
end
function InceptionE:forward(x)
  local b1 = self.branch1x1(x)
  local b3 = self.branch3x3_1(x)
  b3 = cat { self.branch3x3_2a(b3), self.branch3x3_2b(b3) }
  local bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
  bd = cat { self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd) }
  local pooled
  if self.pool == "max" then pooled = max_pool(x, 3, 1, 1) else pooled = avg_pool_nopad(x) end
  return cat { b1, b3, bd, self.branch_pool(pooled) }
end
function InceptionE:extra_repr() return "pool=" .. self.pool end

local FIDInceptionV3 = nn.Module:extend("FIDInceptionV3")
M.FIDInceptionV3 = FIDInceptionV3

function FIDInceptionV3:__init(opts)
  opts = opts or {}
  self.resize_input = opts.resize_input ~= false
  self.normalize_input = opts.normalize_input ~= false
  self.Conv2d_1a_3x3 = B(3, 32, 3, { stride = 2 })
  self.Conv2d_2a_3x3 = B(32, 32, 3)
  self.Conv2d_2b_3x3 = B(32, 64, 3, { padding = 1 })
  self.maxpool1 = nn.MaxPool2d(3, { stride = 2 })
  self.Conv2d_3b_1x1 = B(64, 80, 1)
  self.Conv2d_4a_3x3 = B(80, 192, 3)
  self.maxpool2 = nn.MaxPool2d(3, { stride = 2 })
  self.Mixed_5b = InceptionA(192, 32)
  self.Mixed_5c = InceptionA(256, 64)
  self.Mixed_5d = InceptionA(288, 64)
  self.Mixed_6a = InceptionB(288)
  self.Mixed_6b = InceptionC(768, 128)
  self.Mixed_6c = InceptionC(768, 160)
  self.Mixed_6d = InceptionC(768, 160)
  self.Mixed_6e = InceptionC(768, 192)
  self.Mixed_7a = InceptionD(768)
  self.Mixed_7b = InceptionE(1280, "avg")
  self.Mixed_7c = InceptionE(2048, "max")
  self.avgpool = nn.AdaptiveAvgPool2d(1)
  self.dropout = nn.Dropout(0.5)
  self.fc = nn.Linear(2048, 1008)
  self:eval()   -- a feature extractor: BatchNorm uses the running statistics
end

--- The input as the network sees it: resized to 299x299 (bilinear,
-- align_corners=false) and mapped from [0, 1] to [-1, 1].
function FIDInceptionV3:prepare(x)
  if x:dim() ~= 4 or x:size(2) ~= 3 then
    error("inception_v3_fid: expected images (N, 3, H, W) in [0, 1], got shape ["
      .. table.concat(x:shape(), ", ") .. "]", 3)
  end
  if self.resize_input then
    x = core.interpolate(x, { size = { 299, 299 }, mode = "bilinear", align_corners = false })
  end
  if self.normalize_input then x = x * 2 - 1 end
  return x
end

--- The outputs of pytorch-fid's blocks 0..3 (64x73x73, 192x35x35, 768x17x17, 2048x1x1 at 299x299).
function FIDInceptionV3:blocks(x)
  x = self:prepare(x)
  local out = {}
  x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
  out[1] = x
  x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
  out[2] = x
  for _, name in ipairs { "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e" } do
    x = self[name](x)
  end
  out[3] = x
  x = self.avgpool(self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x))))
  out[4] = x
  return out
end

--- (N, 2048) pool3 features of images in [0, 1].
function FIDInceptionV3:features(x)
  return self:blocks(x)[4]:flatten(2)
end

FIDInceptionV3.forward = FIDInceptionV3.features

--- (N, 1008) logits of the 2015 graph's classifier (for the Inception Score).
function FIDInceptionV3:logits(x)
  return self.fc(self.dropout(self:features(x)))
end

--- inception_v3_fid{resize_input=true, normalize_input=true}: random weights in
-- eval mode; load pt_inception-2015-12-05-6726825d.pth with load_state_dict.
function M.inception_v3_fid(opts) return FIDInceptionV3(opts) end

return M
