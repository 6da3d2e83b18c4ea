--- advdiff.models.resnet: torchvision's ResNet-18/34 (same module and
-- parameter names: conv1, bn1, layer1.0.conv1, layer2.0.downsample.0, fc, ...)
-- and the paper's discriminator built on a ResNet-18 backbone.
local core = require "advdiff.core"
local nn = require "advdiff.nn"

local M = {}

---------------------------------------------------------------------------- ResNet

local BasicBlock = nn.Module:extend("BasicBlock")
M.BasicBlock = BasicBlock
BasicBlock.expansion = 1

function BasicBlock:__init(inplanes, planes, stride, downsample)
  self.conv1 = nn.Conv2d(inplanes, planes, 3, { stride = stride, padding = 1, bias = false })
  self.bn1 = nn.BatchNorm2d(planes)
  self.relu = nn.ReLU()
  self.conv2 = nn.Conv2d(planes, planes, 3, { padding = 1, bias = false })
  self.bn2 = nn.BatchNorm2d(planes)
  if downsample ~= nil then self.downsample = downsample end
end

function BasicBlock:forward(x)
  local out = core.relu(self.bn1(self.conv1(x)))
  out = self.bn2(self.conv2(out))
  local identity = x
  if self.downsample ~= nil then identity = self.downsample(x) end
  return core.relu(out + identity)
end

local ResNet = nn.Module:extend("ResNet")
M.ResNet = ResNet

--- ResNet(layers, {num_classes=1000}) with BasicBlocks; layers e.g. {2, 2, 2, 2}.
function ResNet:__init(layers, opts)
  opts = opts or {}
  local num_classes = opts.num_classes or 1000
  self.inplanes = 64
  self.conv1 = nn.Conv2d(3, 64, 7, { stride = 2, padding = 3, bias = false })
  self.bn1 = nn.BatchNorm2d(64)
  self.relu = nn.ReLU()
  self.maxpool = nn.MaxPool2d(3, { stride = 2, padding = 1 })
  local widths = { 64, 128, 256, 512 }
  for i = 1, 4 do
    self["layer" .. i] = self:_make_layer(widths[i], layers[i], i == 1 and 1 or 2)
  end
  self.avgpool = nn.AdaptiveAvgPool2d(1)
  self.fc = nn.Linear(512, num_classes)
  -- torchvision's initialisation: He normal (fan_out) for convolutions
  for _, m in ipairs(self:modules()) do
    if getmetatable(m) == nn.Conv2d then
      nn.init.kaiming_normal_(m.weight, { mode = "fan_out", nonlinearity = "relu" })
    end
  end
end

function ResNet:_make_layer(planes, blocks, stride)
  local downsample
  if stride ~= 1 or self.inplanes ~= planes then
    downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, { stride = stride, bias = false }),
                               nn.BatchNorm2d(planes))
  end
  local mods = { BasicBlock(self.inplanes, planes, stride, downsample) }
  self.inplanes = planes
  for _ = 2, blocks do mods[#mods + 1] = BasicBlock(planes, planes, 1) end
  return nn.Sequential(mods)
end

--- The 512-d globally average-pooled features (N, 512), before fc.
function ResNet:features(x)
  x = self.maxpool(core.relu(self.bn1(self.conv1(x))))
  x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
  return self.avgpool(x):flatten(2)
end

--- Logits (N, num_classes); with fc replaced by nn.Identity(), the features.
function ResNet:forward(x) return self.fc(self:features(x)) end

--- resnet18{num_classes=1000}: torchvision.models.resnet18's architecture and names.
function M.resnet18(opts) return ResNet({ 2, 2, 2, 2 }, opts) end
--- resnet34{num_classes=1000}
function M.resnet34(opts) return ResNet({ 3, 4, 6, 3 }, opts) end

---------------------------------------------------------------------------- discriminator

local IMAGENET_MEAN = { 0.485, 0.456, 0.406 }
local IMAGENET_STD = { 0.229, 0.224, 0.225 }

--- The paper's discriminator: images in [-1, 1] -> [0, 1] -> ImageNet mean/std
-- -> ResNet backbone with fc = Identity (512-d features) -> concatenated with a
-- class embedding -> Linear(512+embed_dim, hidden) -> ReLU -> Linear(hidden, 1).
-- forward(x, y) returns one logit per image, shape (N). y: i64 class labels
-- (0-based). Without num_classes the discriminator is unconditional (the head
-- sees the 512 features alone and y is ignored).
-- Names: backbone.* (torchvision's, without fc), embed.weight, head.0.*, head.2.*
-- ImageNet weights: load them into a resnet18 first and pass it as backbone
-- (its fc is then replaced).
local Discriminator = nn.Module:extend("ResNetDiscriminator")
M.Discriminator = Discriminator

function Discriminator:__init(opts)
  opts = opts or {}
  local backbone = opts.backbone or M.resnet18 { num_classes = 1000 }
  if not nn.is_module(backbone) then error("discriminator: backbone must be a module", 3) end
  local num_classes = opts.num_classes
  if num_classes == false or num_classes == 0 then num_classes = nil end
  if num_classes ~= nil and (math.type(num_classes) ~= "integer" or num_classes < 0) then
    error("discriminator: num_classes must be a positive integer or nil", 3)
  end
  local embed_dim, hidden = opts.embed_dim or 128, opts.hidden or 256
  local feat_dim = opts.feature_dim or 512
  self.num_classes, self.embed_dim, self.hidden = num_classes, embed_dim, hidden
  if backbone.fc ~= nil then backbone.fc = nn.Identity() end
  self.backbone = backbone
  if num_classes ~= nil then
    self.embed = nn.Embedding(num_classes, embed_dim)
  end
  local in_dim = feat_dim + (num_classes and embed_dim or 0)
  self.head = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
  self:register_buffer("mean", core.tensor(IMAGENET_MEAN):view(1, 3, 1, 1), { persistent = false })
  self:register_buffer("std", core.tensor(IMAGENET_STD):view(1, 3, 1, 1), { persistent = false })
  self.backbone_frozen = false
end

--- The backbone's features (N, 512) of images x in [-1, 1].
function Discriminator:features(x)
  local x01 = (x + 1) * 0.5
  return self.backbone((x01 - self.mean) / self.std)
end

function Discriminator:forward(x, y)
  local h = self:features(x)
  if self.num_classes ~= nil then
    if y == nil then error("discriminator: class labels y are required (num_classes was given)", 2) end
    h = core.cat({ h, self.embed(y) }, 2)
  end
  return self.head(h):view(-1)
end

--- Freeze the backbone: no gradients for its parameters and its BatchNorm
-- layers use (and keep) their running statistics, even after train().
function Discriminator:freeze_backbone()
  self.backbone:freeze()
  for _, m in ipairs(self.backbone:modules()) do
    if getmetatable(m) == nn.BatchNorm2d then m.freeze_stats = true end
  end
  self.backbone_frozen = true
  self.backbone:eval()
  return self
end

function Discriminator:unfreeze_backbone()
  self.backbone:unfreeze()
  for _, m in ipairs(self.backbone:modules()) do
    if getmetatable(m) == nn.BatchNorm2d then m.freeze_stats = false end
  end
  self.backbone_frozen = false
  self.backbone:train(self.training)
  return self
end

function Discriminator:train(mode)
  nn.Module.train(self, mode)
  if self.backbone_frozen then self.backbone:eval() end
  return self
end

function Discriminator:extra_repr()
  return string.format("num_classes=%s, embed_dim=%d, hidden=%d, backbone_frozen=%s",
    self.num_classes and tostring(self.num_classes) or "None", self.embed_dim, self.hidden,
    nn.Module.pybool(self.backbone_frozen))
end

--- discriminator{backbone=<module or nil>, num_classes=<n or nil>, embed_dim=128, hidden=256}
function M.discriminator(opts) return Discriminator(opts) end

return M
