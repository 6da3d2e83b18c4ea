--- advdiff.train.noisy_d: a timestep-conditioned head over a discriminator's
-- features, for the "re-noised D input" design (Diffusion-GAN style: D sees
-- real and fake images diffused to a random t and is told t).
--
--   local TD = require("advdiff.train.noisy_d").TimeConditionedD
--   local D = TD(ad.models.discriminator{...}, {t_dim = 128, hidden = 256})
--   D(x, y, t) -> (N) logits;   t: i64 steps (any scale: the embedding is sinusoidal)
--
-- The wrapped discriminator's backbone features (base:features(x)) and its
-- class embedding (base.embed, when it has one) are concatenated with a
-- sinusoidal embedding of t and go through a new head Linear -> ReLU ->
-- Linear(hidden, 1). The base's own head is not used. Names: base.* (the
-- wrapped D, so its backbone weights load as before), thead.0.*, thead.2.*.
local ad = require "advdiff"
local nn = require "advdiff.nn"

local M = {}

local TimeConditionedD = nn.Module:extend("TimeConditionedD")
M.TimeConditionedD = TimeConditionedD
TimeConditionedD.time_conditioned = true

function TimeConditionedD:__init(base, opts)
  opts = opts or {}
  if not nn.is_module(base) or type(base.features) ~= "function" then
    error("TimeConditionedD: the base must be a discriminator with a features(x) method", 3)
  end
  self.base = base
  self.t_dim = opts.t_dim or 128
  local emb = base.embed and base.embed_dim or 0
  local feat = opts.feature_dim
  if feat == nil and base.head and base.head[1] and base.head[1].weight then
    feat = base.head[1].weight:shape()[2] - emb   -- the base head's input: features + class embedding
  end
  feat = feat or 512
  self.thead = nn.Sequential(nn.Linear(feat + emb + self.t_dim, opts.hidden or 256), nn.ReLU(),
                             nn.Linear(opts.hidden or 256, 1))
end

function TimeConditionedD:forward(x, y, t)
  if t == nil then error("TimeConditionedD: the timesteps t are required", 2) end
  local h = { self.base:features(x) }
  if self.base.embed then
    if y == nil then error("TimeConditionedD: class labels y are required", 2) end
    h[#h + 1] = self.base.embed(y)
  end
  local te = require("advdiff.models.adm").timestep_embedding(t, self.t_dim)
  if te:dtype() ~= h[1]:dtype() then te = te:to(h[1]:dtype()) end
  h[#h + 1] = te
  return self.thead(ad.cat(h, 2)):view(-1)
end

function TimeConditionedD:freeze_backbone()
  if self.base.freeze_backbone then self.base:freeze_backbone() end
  return self
end

function TimeConditionedD:train(mode)
  nn.Module.train(self, mode)
  if self.base.backbone_frozen and self.base.backbone then self.base.backbone:eval() end
  return self
end

return M
