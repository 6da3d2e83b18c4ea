--- advdiff.models: the networks of the paper's method, with PyTorch's
-- parameter names so that existing checkpoints load as they are.
--   ad.models.resnet18{num_classes=1000}       torchvision's ResNet-18 (also resnet34)
--   ad.models.discriminator{backbone=, num_classes=, embed_dim=128, hidden=256}
--   ad.models.inception_v3_fid{resize_input=true, normalize_input=true}   pytorch-fid's FID Inception
--   ad.models.adm.UNetModel(opts)              guided-diffusion's ADM U-Net
-- Each submodule is loaded on first use.
local models = {}

local function from(modname, field)
  return function(...) return require(modname)[field](...) end
end

models.resnet18 = from("advdiff.models.resnet", "resnet18")
models.resnet34 = from("advdiff.models.resnet", "resnet34")
models.discriminator = from("advdiff.models.resnet", "discriminator")
models.inception_v3_fid = from("advdiff.models.inception", "inception_v3_fid")

local lazy = { adm = "advdiff.models.adm", resnet = "advdiff.models.resnet", inception = "advdiff.models.inception" }

return setmetatable(models, {
  __index = function(t, k)
    local name = lazy[k]
    if name == nil then return nil end
    local mod = require(name)
    rawset(t, k, mod)
    return mod
  end,
})
