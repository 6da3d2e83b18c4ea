--- advdiff.train.augment: DiffAugment (Zhao et al., "Differentiable
-- Augmentation for Data-Efficient GAN Training", 2020) with the reference
-- implementation's three policies, written with differentiable core ops so the
-- generator's gradient flows through the augmentation:
--   color        brightness x + (u - 0.5); saturation (x - mean_c) * 2u + mean_c;
--                contrast (x - mean) * (u + 0.5) + mean   (u ~ U[0,1) per image)
--   translation  shift by up to ratio (1/8) of the size in each direction, per
--                image, zero padded
--   cutout       a zeroed square of half the size (ratio 1/2) at a random place
-- Images are (N, C, H, W) in [-1, 1]. Every draw comes from `gen` (an
-- ad.Generator), so a run reproduces its augmentations.
--
--   local aug = require "advdiff.train.augment"
--   y = aug.diff_augment(x, "color,translation,cutout", gen)
local ad = require "advdiff"

local M = {}

local function rand(n, gen, like)
  local dev = like:device()
  return ad.rand({ n, 1, 1, 1 }, { dtype = like:dtype() == "f64" and "f64" or "f32", generator = gen,
                                   device = dev ~= "cpu" and dev or nil })
end

function M.brightness(x, gen) return x + (rand(x:shape()[1], gen, x) - 0.5) end

function M.saturation(x, gen)
  local m = x:mean(2, { keepdim = true })
  return (x - m) * (rand(x:shape()[1], gen, x) * 2) + m
end

function M.contrast(x, gen)
  local m = x:mean({ 2, 3, 4 }, { keepdim = true })
  return (x - m) * (rand(x:shape()[1], gen, x) + 0.5) + m
end

--- Per-image shift by integers in [-ratio*H, ratio*H] x [-ratio*W, ratio*W], zero fill.
function M.translation(x, gen, ratio)
  ratio = ratio or 0.125
  local s = x:shape()
  local N, H, W = s[1], s[3], s[4]
  local sh, sw = math.floor(H * ratio + 0.5), math.floor(W * ratio + 0.5)
  if sh == 0 and sw == 0 then return x end
  local ty = ad.randint(-sh, sh + 1, { N }, { generator = gen }):tolist()
  local tx = ad.randint(-sw, sw + 1, { N }, { generator = gen }):tolist()
  local padded = ad.pad(x, { sw, sw, sh, sh })
  local parts = {}
  for i = 1, N do
    -- output pixel (y, x) takes input (y - ty, x - tx): a window of the padded image
    local img = padded:narrow(1, i, 1):narrow(3, sh - ty[i] + 1, H):narrow(4, sw - tx[i] + 1, W)
    parts[i] = img
  end
  return ad.cat(parts, 1)
end

--- Zero a square of (ratio*H, ratio*W) per image (centre uniform over the image, clipped).
function M.cutout(x, gen, ratio)
  ratio = ratio or 0.5
  local s = x:shape()
  local N, H, W = s[1], s[3], s[4]
  local ch, cw = math.floor(H * ratio + 0.5), math.floor(W * ratio + 0.5)
  local dev = x:device()
  local dopt = dev ~= "cpu" and dev or nil
  local oy = ad.randint(0, H + (1 - ch % 2), { N, 1, 1, 1 }, { generator = gen, device = dopt })
  local ox = ad.randint(0, W + (1 - cw % 2), { N, 1, 1, 1 }, { generator = gen, device = dopt })
  local ys = ad.arange(0, H, { dtype = "i64", device = dopt }):view(1, 1, H, 1)
  local xs = ad.arange(0, W, { dtype = "i64", device = dopt }):view(1, 1, 1, W)
  -- inside: |y - oy| < ch/2 style window [oy - ch//2, oy - ch//2 + ch)
  local y0, x0 = oy - ch // 2, ox - cw // 2
  local inside = ad.logical_and(ad.logical_and(ys:ge(y0), ys:lt(y0 + ch)), ad.logical_and(xs:ge(x0), xs:lt(x0 + cw)))
  local keep = ad.logical_not(inside):to(x:dtype())
  return x * keep
end

local POLICY = {
  color = { M.brightness, M.saturation, M.contrast },
  translation = { M.translation },
  cutout = { M.cutout },
}

--- Parse "color,translation,cutout" into a list of policy names (error on an unknown one).
function M.parse(policy)
  local out = {}
  if policy == nil or policy == false or policy == "" then return out end
  if type(policy) == "table" then policy = table.concat(policy, ",") end
  for name in tostring(policy):gmatch("[^,%s]+") do
    if not POLICY[name] then
      error(string.format("diff_augment: unknown policy '%s' (expected color, translation, cutout)", name), 3)
    end
    out[#out + 1] = name
  end
  return out
end

--- DiffAugment of x with the policy (a string or a list).
function M.diff_augment(x, policy, gen)
  for _, name in ipairs(M.parse(policy)) do
    for _, f in ipairs(POLICY[name]) do x = f(x, gen) end
  end
  return x
end

return M
